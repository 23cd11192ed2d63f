"""`modelseal verify`: authenticate a whole bundle with its key; writes nothing."""

from __future__ import annotations

import argparse
import json

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
    progress_bar,
    vault_client,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="authenticate a whole bundle with its key; writes nothing",
        description="Unwrap the data key through Vault Transit and authenticate every "
        "chunk, the manifest, the trailer, and optionally the digest pin and a publisher "
        "signature. Decrypted bytes stay in memory buffers and are discarded.",
    )
    p.add_argument("bundle", help=BUNDLE_HELP)
    add_open_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_vault_options(p, transit_key_required=False)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from modelseal.crypto import format as fmt
    from modelseal.crypto.pipeline import NullSink, open_payload
    from modelseal.crypto.stream import ChunkCipher

    pinned, trusted = pin_and_keys(args)
    with open_bundle(args) as stream:
        header = fmt.read_header(stream)
        checked_transit_mount(args, header.envelope.mount)  # before any Vault call
        key = unwrap_key(vault_client(args), args, header.envelope)
        try:
            cipher = ChunkCipher(header, key)
        finally:
            key.wipe()
        with progress_bar(header.core.records_size, "verify", not args.no_progress) as progress:
            result = open_payload(
                header,
                stream,
                cipher,
                lambda m: NullSink(),
                workers=args.workers,
                pinned_digest=pinned,
                trusted_keys=trusted,
                progress=progress,
                digest_algorithm=digest_algorithm(args),
            )
    info = {
        "ok": True,
        "digest": fmt.format_digest(result.digest) if result.digest else None,
        "files": len(result.manifest.files),
        "plaintext_size": header.core.plaintext_size,
        "signer": result.signer,
        "pinned": pinned is not None,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        extra = f", signed by {result.signer}" if result.signer else ""
        print(f"ok: {info['files']} files authenticated{extra}; digest {info['digest']}")
    return 0
