"""`modelseal inspect`: what a bundle says about itself (no secrets, no Vault)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .bundle_options import (
    BUNDLE_HELP,
    add_digest_algorithm_option,
    digest_algorithm,
    open_bundle,
)
from .common import (
    CommandError,
    human_size,
    progress_bar,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a bundle's header, key, sizes, digest and signers (no secrets, no Vault)",
        description="Show what a bundle says about itself: format version, Transit key "
        "and version, plaintext size (to size the memory volume), file count, chunking, "
        "signers, and the bundle digest (computed by reading the whole bundle). Needs no "
        "key and proves nothing about authenticity: use `verify` for that.",
    )
    p.add_argument("bundle", help=BUNDLE_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--digest-only", action="store_true", help="print only the digest (for scripts)")
    p.add_argument(
        "--no-digest", action="store_true", help="read only the header (no digest, no signers)"
    )
    add_digest_algorithm_option(p, "the digest to compute (a bundle can be pinned by either)")
    p.add_argument("--workers", type=int, default=0, help="hashing threads (default: CPUs)")
    p.add_argument(
        "--source-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="fail when a remote source sends nothing for this long (default: 30)",
    )
    p.add_argument("--source-cacert", type=Path, default=None, help="CA bundle for https://")
    p.add_argument("--allow-http", action="store_true", help="DEVELOPMENT ONLY: allow http://")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from modelseal.crypto import format as fmt
    from modelseal.crypto.pipeline import digest_records

    with open_bundle(args) as stream:
        header = fmt.read_header(stream)
        core, env = header.core, header.envelope
        info: dict[str, Any] = {
            "format_version": header.prefix.version,
            "model_name": core.model_name,
            "created_at": core.created_at,
            "plaintext_size": core.plaintext_size,
            "file_count": core.file_count,
            "manifest_size": core.manifest_size,
            "chunk_size": core.chunk_size,
            "chunk_count": core.chunk_count,
            "bundle_id": core.bundle_id.hex(),
            "cipher": fmt.CIPHER,
            "kms": env.kms,
            "transit_mount": env.mount,
            "transit_key": env.key_name,
            "key_version": env.key_version,
            "wrapped_key": env.wrapped_key[:24] + "...",
        }
        if not args.no_digest:
            total = core.records_size
            with progress_bar(total, "digest", not args.no_progress) as progress:
                digest, trailer = digest_records(
                    header,
                    stream,
                    workers=args.workers,
                    progress=progress,
                    algorithm=digest_algorithm(args),
                )
            info["digest"] = fmt.format_digest(digest)
            info["signatures"] = [
                {"key_id": s.key_id, "alg": s.alg, "digest": s.digest_algorithm.value}
                for s in trailer.signatures
            ]
    if args.digest_only:
        if "digest" not in info:
            raise CommandError("--digest-only and --no-digest exclude each other")
        print(info["digest"])
    elif args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info) + 1
        for k, v in info.items():
            if k == "signatures":
                v = ", ".join(s["key_id"] for s in v) or "(unsigned)"
            elif k == "plaintext_size":
                v = f"{v} ({human_size(v)})"
            print(f"{k + ':':<{width}} {v}")
    return 0
