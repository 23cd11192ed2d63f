"""The sealed side of `make bench-ready`: fetch + verify + decrypt + publish from a URI.

`python -m bench.ready.unseal_remote URI --to DIR [--digest PIN] [--ca FILE] [--s3-endpoint
URL]` reads the 32 bytes of a LOCALLY GENERATED data key from its stdin (a pipe) and runs
the unsealer's own path: `open_source` (ranged parallel fetch for a big https/http/s3
bundle) feeding `unseal_stream` (every chunk authenticated, digest pin checked, staging +
atomic publish, wipe on failure). Left out, and said so by the bench: the Vault Transit
unwrap (one round trip to a local Vault, tens of milliseconds). Plain http:// is allowed
here (the sidecar's `unsealer_allow_http_source`), for nginx on loopback without TLS.
S3 credentials come from the environment (AWS_*), as in the sidecar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.unseal.local_key import key_from_stdin
from modelseal.crypto import format as fmt
from modelseal.crypto.stream import SecretBytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("uri")
    ap.add_argument("--to", type=Path, required=True)
    ap.add_argument("--digest", default="")
    ap.add_argument("--ca", type=Path, default=None)
    ap.add_argument("--s3-endpoint", default=None)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument(
        "--one-stream",
        action="store_true",
        help="for comparison only: no ranged parallel fetch, one GET streamed in order",
    )
    ap.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write what the source did here (JSON: switched_at, sampled rates)",
    )
    args = ap.parse_args(argv)

    from modelseal.sources import open_source, ranged
    from modelseal.unsealer.engine import UnsealOptions, unseal_stream

    if args.one_stream:
        ranged.MIN_RANGED_SIZE = 1 << 62  # every bundle is "small": one stream

    key = key_from_stdin()
    pinned = fmt.parse_digest(args.digest) if args.digest else None
    try:
        with open_source(
            args.uri,
            timeout_s=60.0,
            ca_file=args.ca,
            s3_endpoint_url=args.s3_endpoint,
            allow_http=True,
        ) as stream:
            unseal_stream(
                stream,
                args.to,
                lambda env: SecretBytes(key.reveal()),
                UnsealOptions(workers=args.workers, pinned_digest=pinned, compute_digest=False),
            )
            ranged_buffers = stream.buffer_bytes
            reader = getattr(stream, "reader", None)
    finally:
        key.wipe()
    if args.report:
        args.report.write_text(
            json.dumps(
                {
                    "switched_at": getattr(reader, "switched_at", None),
                    "sampled": getattr(reader, "sampled", None),
                }
            )
        )
    print(f"source buffers: {ranged_buffers} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
