"""``modelseal audit verify FILE``: check an audit log's chain and signed checkpoints.

Exit status 0 when the log verifies, 1 when it is broken (the first broken line is named),
2 on usage errors (unreadable file or key). ``--key-file`` names the HMAC checkpoint key
(the same file the gateway's ``audit_hmac_key_file`` names); without it, signatures are
not checked. ``--strict`` also fails a log whose last records are not covered by a
checkpoint. ``--require-seal`` fails a log that does not end with the gateway's signed
shutdown checkpoint (a truncated log); ``--max-age S`` accepts instead a log whose last
signed checkpoint is at most S seconds old (a gateway still running). ``--model NS/NAME``
verifies one model's gateway log with the key derived for it from the platform key in
``--key-file``. ``--json`` prints the result as JSON.

``register(subparsers)`` adds the ``audit`` command to the main CLI; ``main(argv)`` runs it
on its own (``python -m modelseal.cli.audit verify FILE``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelseal.audit.keyfile import model_audit_key, read_key
from modelseal.audit.verify import verify_file


def _verify(args: argparse.Namespace) -> int:
    try:
        key = read_key(args.key_file) if args.key_file else None
        if args.model:
            namespace, sep, name = args.model.partition("/")
            if not (key and sep and namespace and name):
                raise ValueError("--model NAMESPACE/NAME needs --key-file (the platform key)")
            key = model_audit_key(key, namespace, name)
        result = verify_file(
            args.file,
            key,
            strict=args.strict,
            require_seal=args.require_seal,
            max_age_s=args.max_age,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        print(result.summary())
    return 0 if result.ok else 1


def register(subparsers: Any) -> None:
    """Add ``audit verify`` to an argparse sub-command set."""
    audit = subparsers.add_parser("audit", help="audit log tools")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser("verify", help="check an audit log's hash chain and checkpoints")
    verify.add_argument("file", type=Path, help="audit log (JSON lines)")
    verify.add_argument("--key-file", type=Path, help="HMAC checkpoint key file")
    verify.add_argument(
        "--strict", action="store_true", help="fail when the last records are unsigned"
    )
    verify.add_argument(
        "--require-seal",
        action="store_true",
        help="fail unless the log ends with the signed shutdown checkpoint (truncation)",
    )
    verify.add_argument(
        "--max-age",
        type=float,
        metavar="SECONDS",
        help="accept an unsealed log whose last checkpoint is at most this old (running)",
    )
    verify.add_argument(
        "--model",
        metavar="NAMESPACE/NAME",
        help="verify with the key derived for this model from --key-file (the platform key)",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_verify)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelseal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    if sys.argv[1:2] != ["audit"]:
        sys.argv.insert(1, "audit")
    raise SystemExit(main())
