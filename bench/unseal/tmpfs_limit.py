"""The physical limit for `make bench-unseal`: write N bytes into tmpfs from T threads.

    python -m bench.unseal.tmpfs_limit --mode files|mmap --threads T --bytes N --to DIR

- `files`: T threads, each `pwrite`s 1 MiB blocks into a file of its own (no shared inode
  lock), N/T bytes each;
- `mmap`: one file of N bytes (ftruncate), mapped shared once; T threads copy 1 MiB blocks
  into interleaved ranges of it (`ctypes.memmove`, which releases the GIL).

The bytes come from one random 1 MiB block in memory: this measures writing into tmpfs
(page allocation and copy), not reading a source. Nothing here decrypts or hashes, so it is
the floor an unseal of the same size can approach on this machine.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import sys
import threading
from pathlib import Path

BLOCK = 1024 * 1024


def write_files(dest: Path, total: int, threads: int, block: bytes) -> None:
    share = -(-total // threads)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            size = max(0, min(share, total - t * share))
            fd = os.open(dest / f"part-{t}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                pos = 0
                while pos < size:
                    n = min(BLOCK, size - pos)
                    pos += os.pwrite(fd, memoryview(block)[:n], pos)
            finally:
                os.close(fd)
        except BaseException as exc:
            errors.append(exc)

    _run_threads(run, threads)
    if errors:
        raise errors[0]


def write_mmap(dest: Path, total: int, threads: int, block: bytes) -> None:
    src = ctypes.create_string_buffer(block, len(block))
    fd = os.open(dest / "one", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, total)
        mm = mmap.mmap(fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    holder = ctypes.c_char.from_buffer(mm)
    base = ctypes.addressof(holder)
    blocks = -(-total // BLOCK)

    def run(t: int) -> None:
        for i in range(t, blocks, threads):
            off = i * BLOCK
            ctypes.memmove(base + off, src, min(BLOCK, total - off))

    try:
        _run_threads(run, threads)
    finally:
        del holder
        mm.close()


def _run_threads(fn: object, threads: int) -> None:
    assert callable(fn)
    pool = [threading.Thread(target=fn, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=["files", "mmap"], required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--to", type=Path, required=True)
    args = ap.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    args.to.mkdir(mode=0o700)
    block = os.urandom(BLOCK)
    if args.mode == "files":
        write_files(args.to, args.bytes, threads, block)
    else:
        write_mmap(args.to, args.bytes, threads, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
