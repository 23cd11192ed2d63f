"""`modelseal api-key`: issue a tenant API key and its entry for the gateway's keys file.

The key (``<key id>.<secret>``, 256 random bits) is printed once, on stdout, for the
tenant; the entry (JSON, on stdout after it, or with ``--entry-only`` alone when the key
goes to a file) holds only its hash and key id, for the API keys Secret. With the key id
in the entry, the gateway refuses a key with another id after one lookup, without
computing any hash for it (see ``modelseal.gateway.keys``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .common import EXIT_IO, CommandError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "api-key",
        help="issue a tenant API key and its entry for the gateway's API keys file",
        description="Make a new API key <key id>.<secret> and print it with the keys-file "
        "entry that the gateway checks it against (sha256 by default: the key is random, "
        "there is nothing to brute-force; --scrypt for policies that want a slow hash).",
    )
    p.add_argument("--consumer", required=True, help="consumer id (unique in the keys file)")
    p.add_argument("--tenant", required=True, help="tenant of the consumer (the license's)")
    p.add_argument("--key-id", default=None, help="key id (4..64 of [A-Za-z0-9-]; default: random)")
    p.add_argument("--scrypt", action="store_true", help="store an scrypt hash, not sha256")
    p.add_argument(
        "--key-out",
        type=Path,
        default=None,
        help="write the key to this new file (mode 0600) instead of stdout",
    )
    p.set_defaults(func=cmd_api_key)


def cmd_api_key(args: argparse.Namespace) -> int:
    from modelseal.gateway.keys import hash_key_scrypt, hash_key_sha256, new_api_key
    from modelseal.quota.license import NAME_RE

    if not NAME_RE.match(args.tenant):
        raise CommandError(f"tenant {args.tenant!r} is not a valid name", 2)
    try:
        key_id, key = new_api_key(args.key_id)
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None
    entry = {
        "id": args.consumer,
        "tenant": args.tenant,
        "key_id": key_id,
        "hash": hash_key_scrypt(key) if args.scrypt else hash_key_sha256(key),
    }
    if args.key_out is not None:
        try:
            fd = os.open(args.key_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CommandError(
                f"{args.key_out} exists; refusing to overwrite it", EXIT_IO
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    else:
        print(key)
    print(json.dumps(entry))
    return 0
