"""HTTPS (and, for tests and clusters without TLS, HTTP) sources via urllib.

The timeout applies to connecting and to every read: a server that stops sending for
`timeout_s` seconds fails the unseal with a clear "stalled" error instead of hanging.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request
from pathlib import Path

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
    return SourceStream(
        name,
        response.readinto,
        response.close,
        size=size,
        errors=(OSError, http.client.HTTPException),
        timeout_s=timeout_s,
    )
