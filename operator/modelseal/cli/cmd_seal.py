"""`modelseal seal`: encrypt a Triton model directory into a sealed bundle."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .bundle_options import (
    add_digest_algorithm_option,
    digest_algorithm,
    read_file,
)
from .common import (
    add_vault_options,
    configured_transit_mount,
    human_size,
    progress_bar,
    vault_client,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "seal",
        help="encrypt a Triton model directory into a sealed bundle",
        description="Encrypt a model directory (regular files and directories only) into "
        "one sealed bundle: a fresh 256-bit data key from Vault Transit `datakey` "
        "encrypts the manifest and every file with chunked AES-256-GCM; the wrapped key "
        "goes in the header. Prints the bundle digest to pin in a ProtectedModel.",
    )
    p.add_argument("directory", type=Path, help="the model directory (Triton repository layout)")
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle file to write")
    p.add_argument(
        "--sign-key",
        type=Path,
        default=None,
        help="Ed25519 private key (PEM, from `modelseal keygen`) to sign the bundle with",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=1024 * 1024,
        help="plaintext bytes per chunk, 4 KiB..64 MiB (default: 1 MiB)",
    )
    p.add_argument(
        "--model-name", default="", help="label stored in the header (default: the directory name)"
    )
    add_digest_algorithm_option(p, "the digest printed to pin, and signed by --sign-key")
    p.add_argument("--workers", type=int, default=0, help="encryption threads (default: CPUs)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_vault_options(p, transit_key_required=True)
    p.set_defaults(func=cmd_seal)


def cmd_seal(args: argparse.Namespace) -> int:
    from modelseal.crypto import sign

    from .sealing import scan_model_dir, seal_directory

    sign_key = None
    if args.sign_key is not None:
        password = os.environ.get("MODELSEAL_SIGN_KEY_PASSWORD")
        sign_key = sign.load_private_key(
            read_file(args.sign_key), password.encode() if password else None
        )
    directory: Path = args.directory
    manifest = scan_model_dir(directory)
    client = vault_client(args)
    with progress_bar(manifest.total_size, "seal", not args.no_progress) as progress:
        result = seal_directory(
            directory,
            args.output,
            client,
            key_name=args.transit_key,
            mount=configured_transit_mount(args),
            chunk_size=args.chunk_size,
            model_name=args.model_name or directory.resolve().name,
            sign_key=sign_key,
            workers=args.workers,
            digest_algorithm=digest_algorithm(args),
            force=args.force,
            progress=progress,
            manifest=manifest,
        )
    core = result.header.core
    summary = {
        "output": str(result.output),
        "digest": result.digest,
        "plaintext_size": core.plaintext_size,
        "file_count": core.file_count,
        "bundle_size": result.size,
        "transit_key": args.transit_key,
        "key_version": result.header.envelope.key_version,
        "signed": sign_key is not None,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"sealed {directory} -> {result.output}")
        print(f"  files:          {core.file_count} ({human_size(core.plaintext_size)})")
        print(f"  transit key:    {args.transit_key} v{result.header.envelope.key_version}")
        print(f"  signed:         {'yes' if sign_key else 'no'}")
        print(f"  digest:         {result.digest}")
    return 0
