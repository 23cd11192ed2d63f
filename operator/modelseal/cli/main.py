"""The `modelseal` command.

Each top-level command NAME is a module `modelseal.cli.cmd_<NAME>` (dashes as
underscores) that defines `register(subparsers)`: it adds its parser (and any
sub-commands) and sets `func` (a callable taking the parsed arguments and returning an exit
code). Adding a command is adding a module: no change here. `modelseal NAME ...` imports
only `cmd_NAME`; `modelseal --help` (or an unknown name) imports them all. Keep module
level imports light anyway: heavy dependencies belong inside the command functions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
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
    modules = command_modules()
    if command:
        wanted = f"{__package__}.cmd_{command.replace('-', '_')}"
        if wanted in modules:
            modules = [wanted]
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="modelseal: %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `modelseal inspect ... | head`: not an error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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
