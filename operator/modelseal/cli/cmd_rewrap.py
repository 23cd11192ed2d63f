"""`modelseal rewrap`: re-wrap a bundle's data key to the Transit key's latest version."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .common import (
    EXIT_IO,
    CommandError,
    add_vault_options,
    checked_transit_mount,
    vault_client,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
