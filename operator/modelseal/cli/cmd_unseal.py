"""`modelseal unseal`: verify and decrypt a bundle into a new directory on tmpfs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .bundle_options import (
    BUNDLE_HELP,
    add_open_options,
    digest_algorithm,
    open_bundle,
    pin_and_keys,
    unwrap_key,
)
from .common import (
    add_vault_options,
    checked_transit_mount,
    human_size,
    vault_client,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "unseal",
        help="verify and decrypt a bundle into a new directory on tmpfs",
        description="Unwrap the data key through Vault Transit, then authenticate and "
        "decrypt the bundle in parallel into a private staging directory next to --to, "
        "and rename it to --to once everything (chunks, manifest, pin, signature) checks "
        "out. On any failure nothing is left behind. --to must not exist and must be on "
        "tmpfs unless --allow-non-tmpfs.",
    )
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument(
        "--to", type=Path, required=True, dest="to", help="directory to create (on tmpfs)"
    )
    p.add_argument(
        "--allow-non-tmpfs",
        action="store_true",
        help="DEVELOPMENT ONLY: allow a target that is not tmpfs (plaintext reaches that disk)",
    )
    add_open_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_vault_options(p, transit_key_required=False)
    p.set_defaults(func=cmd_unseal)


def cmd_unseal(args: argparse.Namespace) -> int:
    from modelseal.crypto import format as fmt
    from modelseal.unsealer.engine import (
        UnsealOptions,
        check_memory_fs,
        peak_rss_kib,
        unseal_stream,
    )

    pinned, trusted = pin_and_keys(args)
    dest = Path(os.path.abspath(args.to))
    # refuse a bad target before talking to Vault or fetching anything
    if dest.parent.is_dir():
        check_memory_fs(dest.parent, args.allow_non_tmpfs)

    def unwrap(env: fmt.Envelope) -> Any:
        checked_transit_mount(args, env.mount)  # before logging in to Vault
        return unwrap_key(vault_client(args), args, env)

    with open_bundle(args) as stream, _LateBar(args) as bar:
        report = unseal_stream(
            stream,
            dest,
            unwrap,
            UnsealOptions(
                workers=args.workers,
                pinned_digest=pinned,
                trusted_keys=trusted,
                allow_non_tmpfs=args.allow_non_tmpfs,
                progress=bar.update,
                compute_digest=False,  # hashed only when --digest / --trust-key need it
                digest_algorithm=digest_algorithm(args),
            ),
            on_header=bar.start,
        )
    core = report.header.core
    info = {
        "destination": str(report.destination),
        "digest": report.digest,
        "files": core.file_count,
        "plaintext_size": core.plaintext_size,
        "signer": report.result.signer,
        "filesystem": report.fstype,
        "seconds": round(report.seconds, 3),
        "peak_rss_kib": peak_rss_kib(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        checked = f"digest {report.digest} (pinned)" if pinned else "digest not pinned"
        print(
            f"unsealed {core.file_count} files ({human_size(core.plaintext_size)}) into "
            f"{report.destination} in {report.seconds:.2f}s; every chunk authenticated; "
            f"{checked}"
        )
    return 0


class _LateBar:
    """A progress bar whose total is known only once the header is read."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.enabled = not args.no_progress and sys.stderr.isatty()
        self.bar: Any = None

    def __enter__(self) -> _LateBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def start(self, header: Any) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=header.core.records_size,
                desc="unseal",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
            )

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
