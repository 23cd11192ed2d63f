"""Turn a model directory into a bundle file (the I/O around `crypto.pipeline`)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import hvac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelseal.crypto import ManifestError
from modelseal.crypto import format as fmt
from modelseal.crypto import manifest as mf
from modelseal.crypto.seal import new_core, seal_payload
from modelseal.crypto.workers import Progress
from modelseal.vault import transit

from .common import EXIT_IO, CommandError


def scan_model_dir(root: Path) -> mf.Manifest:
    """Walk `root` (sorted, directories before their content) into a manifest.

    Refuses symlinks and special files: a bundle holds regular files and directories only.
    """
    if not root.is_dir():
        raise CommandError(f"{root} is not a directory", EXIT_IO)
    entries: list[tuple[str, mf.EntryType, int, int]] = []

    def walk(directory: Path, rel: str) -> None:
        with os.scandir(directory) as it:
            items = sorted(it, key=lambda e: e.name)
        for item in items:
            path = f"{rel}{item.name}"
            st = item.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise ManifestError(
                    f"{directory / item.name} is a symlink; bundles hold only regular files "
                    "and directories (copy the target in instead)"
                )
            if stat.S_ISDIR(st.st_mode):
                entries.append((path, "dir", stat.S_IMODE(st.st_mode) & mf.MODE_MASK, 0))
                walk(Path(item.path), f"{path}/")
            elif stat.S_ISREG(st.st_mode):
                entries.append((path, "file", stat.S_IMODE(st.st_mode) & mf.MODE_MASK, st.st_size))
            else:
                raise ManifestError(f"{directory / item.name} is not a regular file or directory")

    walk(root, "")
    return mf.build_manifest(os.urandom(mf.SALT_SIZE), entries)


@dataclass(frozen=True)
class SealResult:
    output: Path
    digest: str
    header: fmt.BundleHeader
    size: int


def seal_directory(
    root: Path,
    output: Path,
    client: hvac.Client,
    *,
    key_name: str,
    mount: str = "transit",
    chunk_size: int = fmt.DEFAULT_CHUNK_SIZE,
    model_name: str = "",
    sign_key: Ed25519PrivateKey | None = None,
    workers: int = 0,
    force: bool = False,
    progress: Progress | None = None,
    manifest: mf.Manifest | None = None,
    digest_algorithm: fmt.DigestAlgorithm = fmt.DEFAULT_DIGEST_ALGORITHM,
) -> SealResult:
    manifest = manifest or scan_model_dir(root)
    if output.exists() and not force:
        raise CommandError(f"{output} exists (use --force to replace it)", EXIT_IO)
    datakey = transit.generate_data_key(client, key_name, mount)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        core = new_core(manifest, datakey.key, chunk_size=chunk_size, model_name=model_name)
        envelope = fmt.Envelope(key_name, datakey.key_version, datakey.wrapped, mount)

        def open_file(entry: mf.Entry) -> BinaryIO:
            fd = os.open(root / entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            return os.fdopen(fd, "rb", buffering=0)

        with open(tmp, "wb") as out:
            digest = seal_payload(
                out,
                manifest,
                core,
                envelope,
                datakey.key,
                open_file,
                workers=workers,
                sign_key=sign_key,
                progress=progress,
                digest_algorithm=digest_algorithm,
            )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        datakey.key.wipe()
    header, _ = fmt.build_header(core, envelope)
    return SealResult(output, fmt.format_digest(digest), header, output.stat().st_size)
