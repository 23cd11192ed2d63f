"""Unseal a bundle stream into a directory: verify, decrypt in parallel, publish atomically.

Used by the unsealer role and by `modelseal unseal`. The steps (the filesystem checks and
wiping are in `memfs`, the writing of the files in `sink`):

1. refuse a destination whose parent is not tmpfs/ramfs (unless `allow_non_tmpfs`), and
   one whose filesystem lacks room for the plaintext size the header declares;
2. unwrap the data key through the caller's `unwrap` (Vault Transit), check it against the
   header's key commitment, and keep only the derived cipher;
3. size the worker pool and chunk buffers to the container's memory limit (`limits`),
   refusing a header whose chunk size cannot fit, before the key is unwrapped;
4. create every file in a private staging directory (mode 0700) next to the destination,
   in the same filesystem, at its final size, and decrypt into it: with `pwrite` from the
   chunk buffer (few workers), or straight into one shared memory map of each file (many
   workers: `pwrite` writers of one file queue on its inode lock, map writers do not);
   a chunk whose tag fails has its range zeroed at once;
5. when every chunk, the manifest, the trailer, the digest pin and the signature check out,
   set the modes and rename the staging directory to the destination in one step.

On any failure the staging directory is overwritten with zeros and removed, so no
plaintext byte stays behind, and the error propagates. Nothing here logs or raises key
bytes or plaintext.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelseal.crypto import BundleError
from modelseal.crypto import format as fmt
from modelseal.crypto.manifest import Manifest
from modelseal.crypto.pipeline import OpenResult, open_payload
from modelseal.crypto.stream import ChunkCipher, SecretBytes
from modelseal.crypto.workers import Progress

from . import limits
from .errors import NotTmpfsError, UnsealError
from .memfs import (
    STAGING_PREFIX,
    check_memory_fs,
    check_room,
    clean_stale_staging,
    filesystem_type,
    wipe_tree,
)
from .sink import DirectorySink, choose_write_mode

log = logging.getLogger("modelseal.unsealer")


def peak_rss_kib() -> int | None:
    """This process's peak resident set (VmHWM), in KiB; None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------------- unseal


@dataclass(frozen=True)
class UnsealOptions:
    workers: int = 0
    pinned_digest: fmt.BundleDigest | None = None
    trusted_keys: Sequence[Ed25519PublicKey] | None = None
    allow_non_tmpfs: bool = False
    expected_key_name: str | None = None
    progress: Progress | None = None
    wipe_overwrite: bool = True
    compute_digest: bool = True  # False: skip hashing unless a pin or trusted keys need it
    # the digest computed without a pin (a pin brings its own algorithm)
    digest_algorithm: fmt.DigestAlgorithm = fmt.DEFAULT_DIGEST_ALGORITHM
    # "auto": mmap from MMAP_MIN_WORKERS workers up, else pwrite. When "auto", the
    # development variable MODELSEAL_UNSEAL_WRITE_MODE may force one (benchmarks).
    write_mode: str = "auto"
    # Injected for tests; None: read the cgroup / the machine.
    memory_limit: int | None = None
    cpus: int | None = None


@dataclass(frozen=True)
class UnsealReport:
    destination: Path
    header: fmt.BundleHeader
    result: OpenResult
    fstype: str
    seconds: float
    plan: limits.BufferPlan | None = None
    write_mode: str = ""

    @property
    def digest(self) -> str | None:
        return fmt.format_digest(self.result.digest) if self.result.digest else None


Unwrap = Callable[[fmt.Envelope], SecretBytes]


def unseal_stream(
    stream: fmt.ReadStream,
    destination: Path,
    unwrap: Unwrap,
    options: UnsealOptions | None = None,
    on_header: Callable[[fmt.BundleHeader], None] | None = None,
) -> UnsealReport:
    """Unseal the bundle read from `stream` into `destination` (which must not exist)."""
    opts = options or UnsealOptions()
    started = time.monotonic()
    destination = Path(os.path.abspath(destination))
    parent = destination.parent
    if not parent.is_dir():
        raise UnsealError(f"{parent} does not exist or is not a directory")
    if os.path.lexists(destination):
        raise UnsealError(f"{destination} already exists; refusing to overwrite it")
    fstype = check_memory_fs(parent, opts.allow_non_tmpfs)

    header = fmt.read_header(stream)
    if on_header is not None:
        on_header(header)
    env = header.envelope
    if opts.expected_key_name and env.key_name != opts.expected_key_name:
        raise UnsealError(
            f"the bundle's data key is wrapped by Transit key {env.key_name!r}, but this "
            f"unsealer may use only {opts.expected_key_name!r}"
        )
    check_room(parent, header)
    plan = plan_unseal(header, opts, source_buffers=int(getattr(stream, "buffer_bytes", 0)))
    write_mode = choose_write_mode(opts.write_mode, plan.workers)

    key = unwrap(env)
    try:
        cipher = ChunkCipher(header, key)
    finally:
        key.wipe()
    log.info("unseal plan: %s; writes: %s", plan.describe(), write_mode)

    staging = parent / f"{STAGING_PREFIX}{destination.name}-{secrets.token_hex(6)}"
    os.mkdir(staging, 0o700)
    sinks: list[DirectorySink] = []
    try:

        def on_manifest(manifest: Manifest) -> DirectorySink:
            sinks.append(DirectorySink(staging, manifest, write_mode))
            return sinks[-1]

        result = open_payload(
            header,
            stream,
            cipher,
            on_manifest,
            workers=plan.workers,
            window=plan.window,
            pinned_digest=opts.pinned_digest,
            trusted_keys=opts.trusted_keys,
            progress=opts.progress,
            compute_digest=opts.compute_digest,
            digest_algorithm=opts.digest_algorithm,
        )
        sink = sinks[0]
        sink.close()
        sink.finalize_modes()
        try:
            os.rename(staging, destination)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise UnsealError(f"{destination} appeared while unsealing") from None
            raise
    except BaseException:
        for s in sinks:
            s.close()
        try:
            wipe_tree(staging, overwrite=opts.wipe_overwrite)
        except Exception as wipe_exc:  # report, but the original error matters more
            log.error("cleanup after a failed unseal: %s", wipe_exc)
        raise
    return UnsealReport(
        destination,
        header,
        result,
        fstype,
        time.monotonic() - started,
        plan,
        write_mode,
    )


def plan_unseal(
    header: fmt.BundleHeader, opts: UnsealOptions, source_buffers: int = 0
) -> limits.BufferPlan:
    """Workers and buffers for this bundle within the memory limit (refused if none fit)."""
    core = header.core
    if opts.memory_limit is not None:
        limit: int | None = opts.memory_limit
    else:
        limit, _source = limits.memory_limit()
    try:
        return limits.plan_buffers(
            cpus=opts.cpus or limits.available_cpus(),
            chunk_size=core.chunk_size,
            plaintext_size=core.plaintext_size,
            manifest_size=core.manifest_size,
            file_count=core.file_count,
            memory_limit=limit,
            requested_workers=opts.workers,
            source_buffers=source_buffers,
        )
    except limits.BufferBudgetError as exc:
        raise UnsealError(str(exc)) from None


__all__ = [
    "BundleError",
    "NotTmpfsError",
    "UnsealError",
    "UnsealOptions",
    "UnsealReport",
    "check_memory_fs",
    "clean_stale_staging",
    "filesystem_type",
    "unseal_stream",
    "wipe_tree",
]
