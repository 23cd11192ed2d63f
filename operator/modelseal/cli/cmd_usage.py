"""`modelseal usage`: a tenant's request usage at a glance (issue 14).

Reads ModelLicenses from the API server (the current kubeconfig, or ``--kubeconfig``) or
from a file (``-f``, e.g. ``kubectl get ml -o json | modelseal usage -f -``) and prints
what the operator last read from the quota store (``status.usage.requests``): per window
used, limit, remaining and when it resets, each model's own counts, and QuotaExhausted.

    modelseal usage -n team-a            # every license in the namespace
    modelseal usage -n team-a gold       # one license
    modelseal usage -n team-a -o json    # the figures as JSON, one object per license
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import EXIT_FAILED, EXIT_IO, CommandError

WINDOWS = ("day", "month", "lifetime")
HEADER = ("LICENSE", "TENANT", "WINDOW", "USED", "LIMIT", "REMAINING", "RESETS")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "usage",
        help="show a tenant's request usage per license (what the operator read)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("license", nargs="?", help="ModelLicense name (default: all in the namespace)")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig's)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG)")
    p.add_argument(
        "-f",
        "--file",
        default=None,
        help="read ModelLicense JSON (one object or a List) from this file, '-' for stdin, "
        "instead of the API server",
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def _items(doc: Any) -> list[Mapping[str, Any]]:
    if not isinstance(doc, Mapping):
        raise CommandError("expected a ModelLicense or a List of them (JSON object)")
    if doc.get("kind") == "ModelLicense":
        return [doc]
    items = doc.get("items")
    if isinstance(items, list):
        return [
            i
            for i in items
            if isinstance(i, Mapping) and i.get("kind", "ModelLicense") == "ModelLicense"
        ]
    raise CommandError("expected a ModelLicense or a List of them (kind or items missing)")


def _from_file(path: str) -> list[Mapping[str, Any]]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}", EXIT_IO) from None
    try:
        return _items(json.loads(text))
    except ValueError as exc:
        raise CommandError(f"{path} is not JSON: {exc}") from None


def _from_cluster(args: argparse.Namespace) -> list[Mapping[str, Any]]:
    import asyncio

    from modelseal.k8s.access import AccessError, load_access
    from modelseal.k8s.api import ApiError, Kube, KubeClient, custom_kind
    from modelseal.models.resource import GROUP, LICENSE_KIND, LICENSE_PLURAL, VERSION

    kind = custom_kind(LICENSE_KIND, GROUP, VERSION, LICENSE_PLURAL)
    try:
        access = load_access(args.kubeconfig)
    except AccessError as exc:
        raise CommandError(f"cannot load the Kubernetes configuration: {exc}", EXIT_IO) from None
    # The context's namespace (a Pod's own, in-cluster), else "default", as kubectl does.
    namespace = args.namespace or access.namespace or "default"

    async def fetch() -> list[Mapping[str, Any]]:
        kube = Kube(KubeClient(access))
        try:
            if args.license:
                one = await kube.get(kind, namespace, args.license)
                if one is None:
                    raise CommandError(f"ModelLicense {namespace}/{args.license} does not exist")
                return [one]
            return list(await kube.list(kind, namespace))
        finally:
            await kube.close()

    try:
        return asyncio.run(fetch())
    except ApiError as exc:
        raise CommandError(f"the API server refused: {exc}", EXIT_IO) from None
    except AccessError as exc:
        raise CommandError(f"cannot reach the API server: {exc}", EXIT_IO) from None


def _quota(lic: Mapping[str, Any]) -> Mapping[str, Any]:
    for c in (lic.get("status") or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == "QuotaExhausted":
            return c
    return {}


def summary(lic: Mapping[str, Any]) -> dict[str, Any]:
    """One license's usage as ``-o json`` prints it."""
    meta = lic.get("metadata") or {}
    usage = ((lic.get("status") or {}).get("usage") or {}).get("requests") or {}
    quota = _quota(lic)
    return {
        "namespace": meta.get("namespace"),
        "license": meta.get("name"),
        "tenant": (lic.get("spec") or {}).get("tenant"),
        "readAt": usage.get("readAt"),
        "store": usage.get("store"),
        "windows": {w: usage[w] for w in WINDOWS if isinstance(usage.get(w), Mapping)},
        "models": usage.get("models") or {},
        "quotaExhausted": {k: quota.get(k) for k in ("status", "reason", "message")},
    }


def table(licenses: list[Mapping[str, Any]]) -> str:
    rows: list[tuple[str, ...]] = [HEADER]
    notes: list[str] = []
    for lic in licenses:
        s = summary(lic)
        name, tenant = str(s["license"]), str(s["tenant"])
        if not s["windows"]:
            rows.append((name, tenant, "-", "-", "-", "-", "-"))
        for window, fig in s["windows"].items():
            limit = fig.get("limit")
            rows.append(
                (
                    name,
                    tenant,
                    window,
                    str(fig.get("used", 0)),
                    "-" if limit is None else str(limit),
                    "-" if limit is None else str(fig.get("remaining", 0)),
                    str(fig.get("resetsAt") or "never"),
                )
            )
        for model, figs in sorted(s["models"].items()):
            counts = ", ".join(
                f"{w} {figs[w]['used']}" + (f"/{figs[w]['limit']}" if "limit" in figs[w] else "")
                for w in WINDOWS
                if isinstance(figs.get(w), Mapping)
            )
            notes.append(f"{name}: model {model}: {counts}")
        q = s["quotaExhausted"]
        read = f"read {s['readAt']} from {s['store']}" if s["readAt"] else "not read yet"
        notes.append(
            f"{name}: QuotaExhausted={q.get('status') or 'Unknown'} ({q.get('reason') or '-'}): "
            f"{q.get('message') or ''} [{read}]"
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines + notes)


def run(args: argparse.Namespace) -> int:
    licenses = _from_file(args.file) if args.file else _from_cluster(args)
    if args.file and args.license:
        licenses = [x for x in licenses if (x.get("metadata") or {}).get("name") == args.license]
    if not licenses:
        raise CommandError("no ModelLicense found", EXIT_FAILED)
    if args.output == "json":
        print(json.dumps([summary(x) for x in licenses], indent=2))
    else:
        print(table(licenses))
    return 0
