"""The unseal without Vault, for `make bench-unseal --local-key`: a LOCALLY GENERATED data key.

Sealing (`seal_with_local_key`, in the bench process) uses the project's own pipeline with
a random 256-bit data key instead of one from Vault Transit; the envelope says so
(`key_name` "bench-local-key", a placeholder wrapped key). Unsealing runs as a child
process (`python -m bench.unseal.local_key BUNDLE --to DIR [--digest PIN]`) that reads the
32 key bytes from its stdin (a pipe: never a file, an argument or the environment) and
calls the same engine as `modelseal unseal` and the sidecar (`unseal_stream`: tmpfs check,
buffer plan, parallel authenticated decryption, digest pin, atomic publish). What it leaves
out is the Transit round trip (login + unwrap, tens of milliseconds against a local Vault).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import BinaryIO

from modelseal.crypto import format as fmt
from modelseal.crypto import manifest as mf
from modelseal.crypto.stream import SecretBytes

LOCAL_ENVELOPE = fmt.Envelope(
    "bench-local-key", 1, "vault:v1:" + base64.b64encode(b"local-key-not-wrapped").decode()
)


def seal_with_local_key(root: Path, output: Path, key: SecretBytes, chunk_size: int) -> str:
    """Seal `root` into `output` with `key`; return the pin (`sha256tree:...`)."""
    from modelseal.cli.sealing import scan_model_dir
    from modelseal.crypto.seal import new_core, seal_payload

    manifest = scan_model_dir(root)
    core = new_core(manifest, key, chunk_size=chunk_size, model_name="bench")

    def open_file(entry: mf.Entry) -> BinaryIO:
        fd = os.open(root / entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return os.fdopen(fd, "rb", buffering=0)

    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            digest = seal_payload(out, manifest, core, LOCAL_ENVELOPE, key, open_file)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return fmt.format_digest(digest)


def key_from_stdin() -> SecretBytes:
    """The 32-byte data key the parent process writes to our stdin (never argv or env)."""
    raw = sys.stdin.buffer.read(33)
    if len(raw) != 32:
        raise SystemExit("expected exactly 32 key bytes on stdin")
    key = SecretBytes(raw)
    del raw
    return key


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--to", type=Path, required=True)
    ap.add_argument("--digest", default="")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)

    from modelseal.sources import open_source
    from modelseal.unsealer.engine import UnsealOptions, unseal_stream

    key = key_from_stdin()
    pinned = fmt.parse_digest(args.digest) if args.digest else None
    try:
        with open_source(str(args.bundle)) as stream:
            report = unseal_stream(
                stream,
                args.to,
                lambda env: SecretBytes(key.reveal()),
                UnsealOptions(workers=args.workers, pinned_digest=pinned, compute_digest=False),
            )
    finally:
        key.wipe()
    plan_obj = getattr(report, "plan", None)  # None: an engine older than the plan
    plan = plan_obj.describe() if plan_obj is not None else "-"
    mode = getattr(report, "write_mode", "pwrite")
    print(f"plan: {plan}; writes: {mode}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
