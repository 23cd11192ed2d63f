"""What every bundle source gives the reader: a sequential, binary, read-only stream."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class SourceError(Exception):
    """The bundle could not be fetched (missing, refused, stalled, connection lost)."""


def redact(uri: str) -> str:
    """The URI without credentials or query string (presigned URLs carry secrets there)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if not parts.scheme or len(parts.scheme) == 1:  # a plain path (or a Windows drive)
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class SourceStream(io.RawIOBase):
    """A raw, read-only stream over `read_into`, mapping transport errors to SourceError.

    `read_into(view)` returns how many bytes it wrote into `view` (0 at the end).
    """

    def __init__(
        self,
        name: str,
        read_into: Callable[[memoryview], int],
        close: Callable[[], Any] | None = None,
        size: int | None = None,
        errors: tuple[type[BaseException], ...] = (OSError,),
        timeout_s: float | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.size = size
        self._read_into = read_into
        self._close = close
        self._errors = errors
        self._timeout_s = timeout_s
        self.bytes_read = 0
        self.buffer_bytes = 0  # memory the source itself holds (ranged fetches)
        self.reader: Any = None  # the ranged/adaptive reader behind it, if any (tests, benches)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        try:
            n = self._read_into(view)
        except SourceError:
            raise
        except TimeoutError:
            raise SourceError(
                f"{self.name}: the source stalled (no data for {self._timeout_s}s after "
                f"{self.bytes_read} bytes)"
            ) from None
        except self._errors as exc:
            if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
                raise SourceError(
                    f"{self.name}: the source stalled (no data for {self._timeout_s}s after "
                    f"{self.bytes_read} bytes)"
                ) from None
            raise SourceError(
                f"{self.name}: read failed after {self.bytes_read} bytes: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from None
        if not n and self.size is not None and self.bytes_read < self.size:
            raise SourceError(
                f"{self.name}: read failed after {self.bytes_read} bytes: the connection "
                f"ended before the announced {self.size} bytes"
            )
        self.bytes_read += n
        return n

    def close(self) -> None:
        if not self.closed and self._close is not None:
            # closing a failed transport must not mask the error being raised
            with contextlib.suppress(Exception):
                self._close()
        super().close()
