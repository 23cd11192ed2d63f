"""HTTPS (and, for tests and clusters without TLS, HTTP) sources via urllib.

The timeout applies to connecting and to every read: a server that stops sending for
`timeout_s` seconds fails the unseal with a clear "stalled" error instead of hanging.

A bundle of at least `ranged.MIN_RANGED_SIZE` bytes from a server that announces
`Accept-Ranges: bytes` is fetched with parallel range requests (`ranged.RangedReader`),
each checked for status 206 and the exact Content-Range, and pinned to the first
response's strong ETag with If-Match (a bundle replaced mid-fetch fails with 412).
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from . import ranged
from .base import SourceError, SourceStream, redact


def open_http(uri: str, *, timeout_s: float, ca_file: Path | None = None) -> SourceStream:
    name = redact(uri)
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not uri.lower().startswith(("https://", "http://")):
        raise SourceError(f"{name}: not an http(s) URI")
    request = urllib.request.Request(uri, headers={"User-Agent": "modelseal-unsealer"})  # noqa: S310 - scheme checked above
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s, context=context)  # noqa: S310 - scheme checked above
    except urllib.error.HTTPError as exc:
        exc.close()
        raise SourceError(f"{name}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"{name}: cannot fetch: {reason}") from None
    length = response.headers.get("Content-Length")
    size = int(length) if length and length.isdigit() else None
    accepts = str(response.headers.get("Accept-Ranges", "")).strip().lower() == "bytes"
    if size is not None and accepts and size >= ranged.MIN_RANGED_SIZE:
        etag = str(response.headers.get("ETag") or "")
        response.close()
        return _ranged_http(uri, name, size, etag, timeout_s, context)
    return SourceStream(
        name,
        response.readinto,
        response.close,
        size=size,
        errors=(OSError, http.client.HTTPException),
        timeout_s=timeout_s,
    )


def _ranged_http(
    uri: str, name: str, size: int, etag: str, timeout_s: float, context: ssl.SSLContext
) -> SourceStream:
    headers = {"User-Agent": "modelseal-unsealer"}
    if etag and not etag.startswith("W/"):
        headers["If-Match"] = etag

    def fetch(start: int, view: memoryview) -> None:
        end = start + len(view) - 1
        req = urllib.request.Request(  # noqa: S310 - scheme checked by open_http
            uri, headers={**headers, "Range": f"bytes={start}-{end}"}
        )
        try:
            resp = urllib.request.urlopen(req, timeout=timeout_s, context=context)  # noqa: S310 - scheme checked by open_http
        except urllib.error.HTTPError as exc:
            exc.close()
            raise SourceError(
                f"{name}: range {start}-{end}: HTTP {exc.code} {exc.reason}"
            ) from None
        with resp:
            if resp.status != 206 or not ranged.content_range_ok(
                resp.headers.get("Content-Range"), start, end, size
            ):
                raise SourceError(
                    f"{name}: range {start}-{end}: the server answered {resp.status} "
                    f"({resp.headers.get('Content-Range')}), not the range asked for"
                )
            got = 0
            while got < len(view):
                n = resp.readinto(view[got:])
                if not n:
                    raise SourceError(f"{name}: range {start}-{end} ended after {got} bytes")
                got += n

    return ranged.ranged_stream(
        name,
        size,
        fetch,
        errors=(OSError, http.client.HTTPException),
        timeout_s=timeout_s,
    )
