"""HTTPS (and, for tests and clusters without TLS, HTTP) sources via urllib.

The timeout applies to connecting and to every read: a server that stops sending for
`timeout_s` seconds fails the unseal with a clear "stalled" error instead of hanging.

A bundle of at least `ranged.MIN_RANGED_SIZE` bytes from a server that announces
`Accept-Ranges: bytes` is read from the first response until that one stream proves to be
the bottleneck (`ranged.AdaptiveReader`), and the rest then with parallel range requests
(`ranged.RangedReader`) over kept-alive connections, each checked for status 206 and the
exact Content-Range, and pinned to the first response's strong ETag with If-Match (a
bundle replaced mid-fetch fails with 412).
"""

from __future__ import annotations

import http.client
import ssl
import threading
import urllib.error
import urllib.parse
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
        return _ranged_http(uri, name, size, etag, timeout_s, context, response)
    return SourceStream(
        name,
        response.readinto,
        response.close,
        size=size,
        errors=(OSError, http.client.HTTPException),
        timeout_s=timeout_s,
    )


def _ranged_http(
    uri: str,
    name: str,
    size: int,
    etag: str,
    timeout_s: float,
    context: ssl.SSLContext,
    first: http.client.HTTPResponse,
) -> SourceStream:
    headers = {"User-Agent": "modelseal-unsealer"}
    if etag and not etag.startswith("W/"):
        headers["If-Match"] = etag
    pool = _ConnectionPool(uri, timeout_s, context)

    def fetch(start: int, view: memoryview) -> None:
        end = start + len(view) - 1
        try:
            resp = pool.get(start, end, {**headers, "Range": f"bytes={start}-{end}"})
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
        on_close=pool.close,
        first=(first.readinto, first.close),
    )


class _ConnectionPool:
    """One kept-alive connection per fetch thread, for the range requests of one bundle.

    A new TCP (and TLS) connection per part costs a handshake every `part_size` bytes; a
    kept connection costs one per thread. A connection that failed, or that the server
    closed, is dropped and the next request opens a new one (the ranged reader retries the
    part). Through a proxy (the *_proxy variables name one for this host) every range goes
    through urllib, as the first request did.
    """

    def __init__(self, uri: str, timeout_s: float, context: ssl.SSLContext) -> None:
        parts = urllib.parse.urlsplit(uri)
        self.uri = uri
        self.https = parts.scheme.lower() == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self.timeout_s = timeout_s
        self.context = context
        proxies = urllib.request.getproxies()
        self.direct = not (
            parts.scheme.lower() in proxies and not urllib.request.proxy_bypass(self.host)
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []
        self._closed = False

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout_s, context=self.context
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            with self._lock:
                if self._closed:
                    raise SourceError("stream closed")
                self._all.append(conn)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def get(self, start: int, end: int, headers: dict[str, str]) -> http.client.HTTPResponse:
        if not self.direct:
            req = urllib.request.Request(self.uri, headers=headers)  # noqa: S310 - scheme checked by open_http
            return urllib.request.urlopen(req, timeout=self.timeout_s, context=self.context)  # type: ignore[no-any-return]  # noqa: S310
        for attempt in (1, 2):
            reused = getattr(self._local, "conn", None) is not None
            conn = self._connection()
            try:
                conn.request("GET", self.target, headers=headers)
                resp = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                self._drop()
                if not reused or attempt == 2:
                    raise
                # a kept connection the server had closed meanwhile: once more on a new one
            except BaseException:
                self._drop()
                raise
        if resp.status >= 400:
            resp.read(64 * 1024)
            resp.close()
            if resp.will_close:
                self._drop()
            raise urllib.error.HTTPError(self.uri, resp.status, resp.reason, resp.headers, None)
        if resp.will_close:
            # the server closes after this response: the next request reconnects
            self._local.conn = None
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
        return resp

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
