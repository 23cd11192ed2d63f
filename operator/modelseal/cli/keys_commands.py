"""`modelseal keygen`: make an Ed25519 key pair for signing bundles."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import EXIT_IO, CommandError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keygen",
        help="create an Ed25519 signing key pair for `seal --sign-key`",
        description="Write a new Ed25519 private key (PKCS#8 PEM, mode 0600) to OUT and its "
        "public key to OUT.pub. Give the private key to `modelseal seal --sign-key`, and "
        "the public key to verifiers (`--trust-key`, or the unsealer's trusted-keys file).",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="private key file to create")
    p.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    from modelseal.crypto import sign

    out: Path = args.out
    pub = out.with_name(out.name + ".pub")
    for path in (out, pub):
        if path.exists():
            raise CommandError(f"{path} exists; refusing to overwrite a key", EXIT_IO)
    private, public = sign.generate_signing_key()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub.write_bytes(public)
    key_id = sign.key_id(sign.load_public_keys(public)[0])
    print(f"private key: {out}\npublic key:  {pub}\nkey id:      {key_id}")
    return 0
