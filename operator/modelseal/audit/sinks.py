"""Where audit lines go: stdout, an append-only file, or an HTTP webhook.

A sink's ``write`` returns only once the lines are durably handed over (written to the
file, accepted by the webhook with a 2xx); it retries failures itself, with back-off, for
as long as it takes. While it retries, the audit queue fills and the gateway applies its
overflow policy. Nothing is dropped.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)

#: An ``fsync`` that took less than this (moving average) runs on the event loop's thread.
INLINE_FSYNC_MAX_S = 0.002


class Sink(abc.ABC):
    name = "abstract"
    #: Whether ``resume_point`` can read the chain back after a restart (a file can).
    readable_back = False

    def __init__(self) -> None:
        self.on_error: Callable[[str], None] = lambda _reason: None

    def resume_point(self) -> tuple[int, str] | None:
        """(next seq, last hash) of a chain this sink already holds, to continue it."""
        return None

    @abc.abstractmethod
    async def write(self, lines: list[bytes]) -> None: ...

    async def sync(self) -> None:  # noqa: B027 - optional
        """Make what was written durable (fsync for files)."""

    async def close(self) -> None:  # noqa: B027 - optional
        pass


class StdoutSink(Sink):
    name = "stdout"

    def __init__(self) -> None:
        super().__init__()
        self._out = sys.stdout.buffer

    async def write(self, lines: list[bytes]) -> None:
        self._out.write(b"".join(lines))
        self._out.flush()


class FileSink(Sink):
    """Appends to one file; on start, continues the chain the file already holds."""

    name = "file"
    readable_back = True

    def __init__(self, path: Path, *, retry_max_s: float = 5.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.retry_max_s = retry_max_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.fsync_s = 0.0  # recent fsync time (moving average)

    def resume_point(self) -> tuple[int, str] | None:
        last = _last_line(self.path)
        if last is None:
            return None
        try:
            body = json.loads(last)
            return int(body["seq"]) + 1, str(body["hash"])
        except (ValueError, KeyError, TypeError):
            log.error("audit file %s ends with an unreadable line; starting a new chain", self.path)
            return None

    async def write(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        delay = 0.05
        while True:
            try:
                written = os.write(self._fd, data)
                if written == len(data):
                    return
                data = data[written:]
                continue
            except OSError as exc:
                self.on_error(f"file: {exc}")
                log.error("audit file %s: write failed, retrying: %s", self.path, exc)
            await asyncio.sleep(delay)
            delay = min(self.retry_max_s, delay * 2)

    async def sync(self) -> None:
        """``fsync``, on the event loop's own thread while the disk answers fast (a
        thread hand-off cost several times the ``fsync``'s own CPU: GIL hand-overs, context
        switches), in a worker thread once it is slow (``INLINE_FSYNC_MAX_S``), so that a
        slow disk never stalls the loop for long; the time taken is followed either way."""
        try:
            if self.fsync_s < INLINE_FSYNC_MAX_S:
                self._timed_fsync()
            else:
                await asyncio.to_thread(self._timed_fsync)
        except OSError as exc:
            # A file that cannot be synchronised at all (a pipe, a character device) has
            # nothing more to give; any other failure means the records may be lost (after
            # a failed fsync Linux may drop the dirty pages), so it must reach the writer.
            if exc.errno != errno.EINVAL:
                raise

    def _timed_fsync(self) -> None:
        t = time.perf_counter()
        try:
            os.fsync(self._fd)
        finally:  # a moving average: back onto the loop once fsyncs are fast again
            self.fsync_s += (time.perf_counter() - t - self.fsync_s) * 0.25

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        os.close(self._fd)


def _last_line(path: Path) -> bytes | None:
    """The last complete line of a file (None when empty or missing)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size == 0:
                return None
            block = 4096
            data = b""
            pos = size
            while pos > 0:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
                stripped = data.rstrip(b"\n")
                if b"\n" in stripped or pos == 0:
                    return stripped.rsplit(b"\n", 1)[-1]
    except FileNotFoundError:
        return None
    return None


class WebhookSink(Sink):
    """POSTs batches as NDJSON (``application/x-ndjson``); a 2xx answer acknowledges them."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        retry_max_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.retry_max_s = retry_max_s
        self._headers = {"Content-Type": "application/x-ndjson"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.delivered_batches = 0

    async def write(self, lines: list[bytes]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = b"".join(lines)
        delay = 0.05
        while True:
            try:
                async with self._session.post(self.url, data=body, headers=self._headers) as r:
                    if 200 <= r.status < 300:
                        self.delivered_batches += 1
                        return
                    reason = f"webhook answered HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"webhook: {type(exc).__name__}: {exc}"
            self.on_error(reason)
            log.warning("audit %s; retrying in %.2fs", reason, delay)
            await asyncio.sleep(delay)
            delay = min(self.retry_max_s, delay * 2)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
