"""What the sealed-bundle commands share: the bundle argument, the options that open a
bundle (pin, trusted keys, workers, source settings) and the helpers behind them.

Each command lives in its own `cmd_<name>` module (`seal`, `inspect`, `verify`, `rewrap`,
`unseal`), so that `modelseal unseal` imports only what `unseal` needs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from modelseal.crypto import format as fmt

from .common import (
    EXIT_IO,
    CommandError,
    checked_transit_mount,
)

BUNDLE_HELP = (
    "a bundle: a path, file:///path, https://host/path or s3://bucket/key "
    "(S3 endpoint from $AWS_ENDPOINT_URL, credentials from the usual AWS settings)"
)


def add_digest_algorithm_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--digest-algorithm",
        choices=[a.value for a in fmt.DigestAlgorithm],
        default=fmt.DEFAULT_DIGEST_ALGORITHM.value,
        help=f"{what} (default: {fmt.DEFAULT_DIGEST_ALGORITHM.value}; sha256tree where a "
        "FIPS-approved hash is required)",
    )


def digest_algorithm(args: argparse.Namespace) -> fmt.DigestAlgorithm:
    return fmt.DigestAlgorithm(args.digest_algorithm)


def add_open_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--digest",
        metavar="PIN",
        default=None,
        help="require this bundle digest ('blake3tree:<64 hex>' or 'sha256tree:<64 hex>', "
        "as `seal` and `inspect` print it); any other bundle is refused",
    )
    add_digest_algorithm_option(
        p, "the digest to compute and check signatures over when no --digest is given"
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


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_IO) from None


def pin_and_keys(
    args: argparse.Namespace,
) -> tuple[fmt.BundleDigest | None, list[Any] | None]:
    from modelseal.crypto import sign

    pinned = fmt.parse_digest(args.digest) if args.digest else None
    trusted: list[Any] = []
    for path in args.trust_key:
        trusted.extend(sign.load_public_keys(read_file(path)))
    return pinned, trusted or None


def open_bundle(args: argparse.Namespace) -> Any:
    from modelseal.sources import open_source

    return open_source(
        args.bundle,
        timeout_s=args.source_timeout,
        ca_file=args.source_cacert,
        s3_endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        allow_http=args.allow_http,
    )


def unwrap_key(client: Any, args: argparse.Namespace, env: Any) -> Any:
    from modelseal.vault import transit

    key_name = args.transit_key or env.key_name
    mount = checked_transit_mount(args, env.mount)
    return transit.unwrap_data_key(client, key_name, env.wrapped_key, mount)
