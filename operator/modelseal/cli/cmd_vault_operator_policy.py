"""`modelseal vault-operator-policy`: the operator's Vault policy for a tenancy declaration.

Reads the declaration from the chart's values file (its ``tenancy`` block, so the platform
keeps one source) or from the JSON the chart renders into ConfigMap ``<fullname>-tenancy``,
and prints the HCL (`modelseal.render.operator_policy`) to write with
``vault policy write modelseal-operator -``. See docs/tenancy.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "vault-operator-policy",
        help="print the operator's Vault policy, narrowed to the tenancy declaration",
        description=__doc__,
    )
    p.add_argument(
        "declaration",
        type=Path,
        help="the chart's values file (its `tenancy` block) or the rendered tenancy.json",
    )
    p.add_argument("--policy-prefix", default="modelseal", help="vault.policyPrefix")
    p.add_argument("--transit-mount", default="transit", help="vault.transitMount")
    p.add_argument("--kubernetes-mount", default="kubernetes", help="vault.kubernetesMount")
    p.add_argument("--audience", default="vault", help="vault.tokenAudience")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from modelseal.models.tenancy import TenancyError, parse_tenancy
    from modelseal.render.operator_policy import operator_policy

    path: Path = args.declaration
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    except yaml.YAMLError as exc:
        print(f"error: {path} is not YAML or JSON: {exc}", file=sys.stderr)
        return 2
    if isinstance(data, dict) and "tenancy" in data:
        data = data["tenancy"]  # a values file
    try:
        tenancy = parse_tenancy(data if data is not None else {})
    except TenancyError as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(
        operator_policy(
            tenancy,
            prefix=args.policy_prefix,
            transit_mount=args.transit_mount,
            kubernetes_mount=args.kubernetes_mount,
            audience=args.audience,
        )
    )
    return 0
