"""The plain S3 download of `make bench-ready`: every object under a prefix into a folder.

`python -m bench.ready.fetch_s3 BUCKET PREFIX DEST [--parallel N]`: N threads (default 4),
one object each at a time, each object one GET streamed straight into its file (boto3,
the urllib3 response's readinto, 1 MiB at a time). One GET per object, not ranged parts
(as `aws s3 cp` would for a big file): the plain side of the benchmark is the simplest
download, as it was when the test S3 server (then moto) read the whole object for every
ranged GET. Credentials and endpoint from the environment (AWS_*).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bucket")
    ap.add_argument("prefix")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--parallel", type=int, default=4)
    args = ap.parse_args(argv)

    import boto3
    from botocore.config import Config

    client: Any = boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"),
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=max(10, args.parallel)),
    )
    prefix = args.prefix.rstrip("/") + "/"
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    if not keys:
        raise SystemExit(f"nothing under s3://{args.bucket}/{prefix}")

    def fetch(key: str) -> int:
        path = args.dest / key[len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        body = client.get_object(Bucket=args.bucket, Key=key)["Body"]
        raw = body._raw_stream
        buf = memoryview(bytearray(MiB))
        total = 0
        with open(path, "wb", buffering=0) as out:
            while n := raw.readinto(buf):
                out.write(buf[:n])
                total += n
        body.close()
        return total

    with ThreadPoolExecutor(args.parallel) as pool:
        total = sum(pool.map(fetch, keys))
    print(f"{len(keys)} objects, {total} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
