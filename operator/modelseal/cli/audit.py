"""``modelseal audit verify FILE``: check an audit log's chain and signed checkpoints.

Exit status 0 when the log verifies, 1 when it is broken (the first broken line is named),
2 on usage errors (unreadable file or key). ``--key-file`` names the HMAC checkpoint key
(the same file the gateway's ``audit_hmac_key_file`` names); without it, signatures are
not checked. ``--strict`` also fails a log whose last records are not covered by a
checkpoint. ``--json`` prints the result as JSON.

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

from modelseal.audit.keyfile import read_key
from modelseal.audit.verify import verify_file


def _verify(args: argparse.Namespace) -> int:
    try:
        key = read_key(args.key_file) if args.key_file else None
        result = verify_file(args.file, key, strict=args.strict)
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
