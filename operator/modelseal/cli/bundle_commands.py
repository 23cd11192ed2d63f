"""`modelseal seal | inspect | verify | rewrap | unseal`: the sealed-bundle commands.

Each command is registered by its own `cmd_<name>` module, so that `modelseal unseal`
imports only what `unseal` needs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .common import (
    EXIT_IO,
    CommandError,
    add_vault_options,
    checked_transit_mount,
    configured_transit_mount,
    human_size,
    progress_bar,
    vault_client,
)

BUNDLE_HELP = (
    "a bundle: a path, file:///path, https://host/path or s3://bucket/key "
    "(S3 endpoint from $AWS_ENDPOINT_URL, credentials from the usual AWS settings)"
)


def _common_open_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--digest",
        metavar="PIN",
        default=None,
        help="require this bundle digest ('sha256tree:<64 hex>', as `seal` and `inspect` "
        "print it); any other bundle is refused",
    )
    p.add_argument(
        "--trust-key",
        metavar="PUBKEY",
        type=Path,
        action="append",
        default=[],
        help="require a valid Ed25519 signature by a key in this PEM file (repeatable; "
        "made by `modelseal keygen`)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="parallel decryption threads (default: one per CPU)",
    )
    p.add_argument(
        "--source-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="fail when a remote source sends nothing for this long (default: 30)",
    )
    p.add_argument(
        "--source-cacert",
        type=Path,
        default=None,
        help="CA bundle to verify an https:// bundle source",
    )
    p.add_argument(
        "--allow-http",
        action="store_true",
        help="DEVELOPMENT ONLY: allow a plain http:// bundle source",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------- seal


def register_seal(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
            _read(args.sign_key), password.encode() if password else None
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


# -------------------------------------------------------------------------- inspect


def register_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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

    with _open(args) as stream:
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
                    header, stream, workers=args.workers, progress=progress
                )
            info["digest"] = fmt.format_digest(digest)
            info["signatures"] = [{"key_id": s.key_id, "alg": s.alg} for s in trailer.signatures]
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


# --------------------------------------------------------------------------- verify


def register_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="authenticate a whole bundle with its key; writes nothing",
        description="Unwrap the data key through Vault Transit and authenticate every "
        "chunk, the manifest, the trailer, and optionally the digest pin and a publisher "
        "signature. Decrypted bytes stay in memory buffers and are discarded.",
    )
    p.add_argument("bundle", help=BUNDLE_HELP)
    _common_open_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_vault_options(p, transit_key_required=False)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from modelseal.crypto import format as fmt
    from modelseal.crypto.pipeline import NullSink, open_payload
    from modelseal.crypto.stream import ChunkCipher

    pinned, trusted = _pin_and_keys(args)
    with _open(args) as stream:
        header = fmt.read_header(stream)
        checked_transit_mount(args, header.envelope.mount)  # before any Vault call
        key = _unwrap(vault_client(args), args, header.envelope)
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


# --------------------------------------------------------------------------- rewrap


def register_rewrap(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rewrap",
        help="re-wrap the data key to the Transit key's latest version (bulk data untouched)",
        description="Ask Vault Transit to rewrap the bundle's data key to the latest key "
        "version (Vault never returns the plaintext key) and write the new key envelope. "
        "Chunks are copied byte for byte, so the bundle digest and signatures stay valid. "
        "Run it after rotating the Transit key and before raising min_decryption_version.",
    )
    p.add_argument("bundle", type=Path, help="bundle file (local)")
    p.add_argument("-o", "--output", type=Path, default=None, help="write here instead of in place")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_vault_options(p, transit_key_required=False)
    p.set_defaults(func=cmd_rewrap)


def cmd_rewrap(args: argparse.Namespace) -> int:
    from modelseal.crypto import format as fmt
    from modelseal.vault import transit

    src: Path = args.bundle
    out: Path = args.output or src
    with open(src, "rb") as f:
        header = fmt.read_header(f)
    env = header.envelope
    key_name = args.transit_key or env.key_name
    mount = checked_transit_mount(args, env.mount)
    client = vault_client(args)
    wrapped, version = transit.rewrap_data_key(client, key_name, env.wrapped_key, mount)
    old_version = env.key_version
    if version == old_version and key_name == env.key_name and out == src:
        changed = False
    else:
        changed = True
        new_env = fmt.Envelope(key_name, version, wrapped, mount)
        _, head = fmt.with_envelope(header, new_env)
        _copy_with_new_header(src, out, head, header.records_offset)
    info = {
        "bundle": str(out),
        "transit_key": key_name,
        "old_version": old_version,
        "new_version": version,
        "changed": changed,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    elif changed:
        print(f"rewrapped {src} -> {out}: {key_name} v{old_version} -> v{version}")
    else:
        print(f"{src} is already wrapped with the latest version (v{version}); nothing to do")
    return 0


def _copy_with_new_header(src: Path, out: Path, head: bytes, body_offset: int) -> None:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            fout.write(head)
            fout.flush()
            size = os.fstat(fin.fileno()).st_size
            offset = body_offset
            while offset < size:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), size - offset, offset)
                if n == 0:
                    raise CommandError(f"{src} changed while it was rewrapped", EXIT_IO)
                offset += n
            os.fsync(fout.fileno())
        os.chmod(tmp, os.stat(src).st_mode & 0o777)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- unseal


def register_unseal(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    _common_open_options(p)
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

    pinned, trusted = _pin_and_keys(args)
    dest = Path(os.path.abspath(args.to))
    # refuse a bad target before talking to Vault or fetching anything
    if dest.parent.is_dir():
        check_memory_fs(dest.parent, args.allow_non_tmpfs)

    def unwrap(env: fmt.Envelope) -> Any:
        checked_transit_mount(args, env.mount)  # before logging in to Vault
        return _unwrap(vault_client(args), args, env)

    with _open(args) as stream, _LateBar(args) as bar:
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


# -------------------------------------------------------------------------- helpers


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_IO) from None


def _pin_and_keys(args: argparse.Namespace) -> tuple[bytes | None, list[Any] | None]:
    from modelseal.crypto import format as fmt
    from modelseal.crypto import sign

    pinned = fmt.parse_digest(args.digest) if args.digest else None
    trusted: list[Any] = []
    for path in args.trust_key:
        trusted.extend(sign.load_public_keys(_read(path)))
    return pinned, trusted or None


def _open(args: argparse.Namespace) -> Any:
    from modelseal.sources import open_source

    return open_source(
        args.bundle,
        timeout_s=args.source_timeout,
        ca_file=args.source_cacert,
        s3_endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        allow_http=args.allow_http,
    )


def _unwrap(client: Any, args: argparse.Namespace, env: Any) -> Any:
    from modelseal.vault import transit

    key_name = args.transit_key or env.key_name
    mount = checked_transit_mount(args, env.mount)
    return transit.unwrap_data_key(client, key_name, env.wrapped_key, mount)
