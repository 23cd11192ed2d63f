"""Bundle sources: where the unsealer and the CLI read a sealed bundle from.

`open_source(uri)` accepts `file:///path`, a plain path (a mounted volume), `https://...`
(`http://` only with `allow_http`), and `s3://bucket/key`. Each returns a sequential
binary stream (`SourceStream`) whose errors are `SourceError` with a message that never
includes credentials (query strings of presigned URLs are redacted).
"""

from __future__ import annotations

from pathlib import Path

from .base import SourceError, SourceStream, redact

__all__ = ["SourceError", "SourceStream", "open_source", "redact"]

SCHEMES = ("file", "https", "http", "s3")


def scheme_of(uri: str) -> str:
    head, sep, _ = uri.partition("://")
    if not sep:
        return "file"  # a plain path, or file:/path
    return head.lower()


def open_source(
    uri: str,
    *,
    timeout_s: float = 30.0,
    ca_file: Path | None = None,
    s3_endpoint_url: str | None = None,
    allow_http: bool = False,
) -> SourceStream:
    scheme = scheme_of(uri)
    if scheme == "file":
        from .local import open_local

        return open_local(uri)
    if scheme == "https" or (scheme == "http" and allow_http):
        from .http import open_http

        return open_http(uri, timeout_s=timeout_s, ca_file=ca_file)
    if scheme == "http":
        raise SourceError("plain http:// bundle sources are refused; use https://")
    if scheme == "s3":
        from .s3 import open_s3

        return open_s3(uri, timeout_s=timeout_s, endpoint_url=s3_endpoint_url)
    raise SourceError(f"unsupported bundle source scheme {scheme!r} (use {', '.join(SCHEMES)})")
