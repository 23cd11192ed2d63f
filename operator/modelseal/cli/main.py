"""The `modelseal` command.

Command groups are modules `modelseal.cli.cmd_<group>` that define
`register(subparsers)`; each adds its sub-commands and sets `func` (a callable taking the
parsed arguments and returning an exit code). Adding a group is adding a module: no change
here. Modules import their heavy dependencies inside the command functions, so `--help`
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from . import common


def command_modules() -> list[str]:
    import modelseal.cli as pkg

    return sorted(
        f"{pkg.__name__}.{m.name}"
        for m in pkgutil.iter_modules(pkg.__path__)
        if m.name.startswith("cmd_")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelseal",
        description="Seal Triton model directories into encrypted, signed bundles whose "
        "data key only Vault Transit can unwrap; inspect, verify, rewrap and unseal them.",
        epilog=common.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress details to stderr"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="modelseal: %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("modelseal: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code = common.classify(exc)
        if code is None:
            raise
        print(f"modelseal {args.command}: error: {common.describe(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
