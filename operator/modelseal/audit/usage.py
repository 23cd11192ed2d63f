"""Metered usage export: admitted requests as CloudEvents to an HTTP endpoint, at least once.

Design (issue 14, item 3). The gateway's audit file *is* the spool: a served request is
answered only once its audit record is durable (``modelseal.audit.log``), so the record of
every admitted request is on disk before anyone could bill it, and nothing is written
twice. A shipper task in the gateway process follows that file from a persisted cursor and
POSTs one CloudEvent per admitted request (``metered: true`` in its record: counted by the
quota store and not refunded) in JSON batch mode (``application/cloudevents-batch+json``,
each event in the structured JSON format of the ``cloudevents`` library). Only after a 2xx
does the cursor move (written to a temporary file, fsync-ed, renamed). So:

* the event id is the record's ``hash`` (unique: it covers the chain position) and its
  source ``/modelseal/gateway/<gateway instance>``: a re-sent event (the gateway killed
  between the 2xx and the cursor write, a retried batch) has the same id, and the receiver
  de-duplicates on (source, id);
* a receiver that is down for any time loses nothing: the shipper retries with exponential
  back-off (capped at ``usage_export_retry_max_s``) while the records wait in the file,
  which the audit trail keeps anyway. What bounds an outage is the volume the audit file is
  on (an emptyDir lives as long as the Pod; with a claim, also across Pods);
* the gateway killed mid-send resumes from the cursor on its next start.

Each event: ``type`` ``io.modelseal.usage.v1``, ``subject`` the tenant, ``time`` the
record's time, ``data`` = tenant, model, version, license, ``count`` (1), the quota windows
the request counted in (``day`` ``YYYY-MM-DD`` and ``month`` ``YYYY-MM``, UTC), gateway and
seq. One event per request rather than counts per period: a count summed over lines read
together would change with where a read stopped, and so would its id; metering products
(OpenMeter, Lago) sum per-request events themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

import aiohttp
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

log = logging.getLogger(__name__)

USAGE_EVENT_TYPE: Final = "io.modelseal.usage.v1"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
_FORMAT: Final = JSONFormat()
_READ_MAX = 4 * 1024 * 1024  # bytes read from the spool per round


class Cursor(NamedTuple):
    """The end of the last line whose events were acknowledged: byte offset, seq, hash."""

    offset: int = 0
    seq: int = -1
    hash: str = ""


def cursor_file_for(audit_file: Path) -> Path:
    return audit_file.with_name(audit_file.name + ".usage-cursor")


def read_cursor(path: Path) -> Cursor:
    try:
        body = json.loads(path.read_bytes())
        return Cursor(int(body["offset"]), int(body["seq"]), str(body["hash"]))
    except FileNotFoundError:
        return Cursor()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("usage cursor %s unreadable (%s): shipping again from the start", path, exc)
        return Cursor()


def write_cursor(path: Path, cursor: Cursor) -> None:
    """Replace ``path`` durably: a crash leaves the old cursor or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(cursor._asdict()).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _time(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def usage_event(record: dict[str, Any]) -> CloudEvent | None:
    """The usage event of one audit line, or None when the line bills nothing."""
    if record.get("type") != "request" or record.get("metered") is not True:
        return None
    ts = str(record.get("ts") or "")
    tenant = str(record.get("tenant") or "")
    attributes: dict[str, Any] = {
        "id": str(record["hash"]),
        "source": f"/modelseal/gateway/{record.get('gw') or 'unknown'}",
        "type": USAGE_EVENT_TYPE,
        "subject": tenant,
        "time": _time(ts),
        "datacontenttype": "application/json",
    }
    data = {
        "tenant": tenant,
        "model": record.get("model"),
        "version": record.get("version"),
        "license": record.get("license"),
        "count": 1,
        "day": ts[:10],
        "month": ts[:7],
        "gateway": record.get("gw"),
        "seq": record.get("seq"),
    }
    return CloudEvent(attributes, data)


def batch_body(events: list[CloudEvent]) -> bytes:
    return b"[" + b",".join(_FORMAT.write(e) for e in events) + b"]"


class Spooled(NamedTuple):
    """Events read from the spool, and the cursor once they are acknowledged."""

    events: list[CloudEvent]
    cursor: Cursor


def read_spool(path: Path, cursor: Cursor, batch_max: int) -> list[Spooled]:
    """The complete lines after ``cursor`` as batches of at most ``batch_max`` events (the
    last batch may hold none: lines that bill nothing still move the cursor)."""
    try:
        with path.open("rb") as fh:
            fh.seek(cursor.offset)
            data = fh.read(_READ_MAX)
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    out: list[Spooled] = []
    events: list[CloudEvent] = []
    offset, last = cursor.offset, cursor
    for raw in data[:end].splitlines(keepends=True):
        offset += len(raw)
        try:
            record = json.loads(raw)
            last = Cursor(offset, int(record["seq"]), str(record["hash"]))
        except (ValueError, KeyError, TypeError):
            log.error("usage spool %s: unreadable line at byte %d skipped", path, offset)
            last = Cursor(offset, last.seq, last.hash)
            continue
        try:
            event = usage_event(record)
        except Exception as exc:  # a line no event can be made of must not stop the rest
            log.error("usage spool %s: seq %s makes no event (%s): skipped", path, last.seq, exc)
            event = None
        if event is not None:
            events.append(event)
        if len(events) >= batch_max:
            out.append(Spooled(events, last))
            events = []
    if last != (out[-1].cursor if out else cursor):
        out.append(Spooled(events, last))
    return out


def checked_cursor(path: Path, cursor: Cursor) -> Cursor:
    """``cursor`` if the spool still has its line where it says, else the start (the file
    was replaced or cut: everything is sent again, and the receiver de-duplicates)."""
    if cursor.offset == 0:
        return cursor
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if cursor.offset <= size:
                start = max(0, cursor.offset - 65536)
                fh.seek(start)
                block = fh.read(cursor.offset - start)
                line = block.rstrip(b"\n").rsplit(b"\n", 1)[-1]
                if block.endswith(b"\n") and json.loads(line).get("hash") == cursor.hash:
                    return cursor
    except (OSError, ValueError, AttributeError):
        pass
    log.warning("usage spool %s does not match its cursor: shipping again from the start", path)
    return Cursor()


class UsageShipper:
    """Follows one audit file and delivers its usage events (see the module's text)."""

    def __init__(
        self,
        spool: Path,
        url: str,
        *,
        cursor_file: Path | None = None,
        token: str | None = None,
        batch_max: int = 500,
        interval_s: float = 1.0,
        retry_max_s: float = 60.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.spool = Path(spool)
        self.url = url
        self.cursor_file = cursor_file or cursor_file_for(self.spool)
        self.batch_max = max(1, batch_max)
        self.interval_s = interval_s
        self.retry_max_s = retry_max_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"Content-Type": BATCH_CONTENT_TYPE}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.cursor = checked_cursor(self.spool, read_cursor(self.cursor_file))
        self.delivered = 0  # events acknowledged by the receiver
        self.failures = 0  # POSTs that failed (retried)
        self.on_delivered: Callable[[int], None] = lambda _n: None
        self.on_failure: Callable[[], None] = lambda: None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def backlog_bytes(self) -> int:
        """How much of the spool is not delivered yet."""
        try:
            return max(0, self.spool.stat().st_size - self.cursor.offset)
        except OSError:
            return 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-shipper")

    async def _run(self) -> None:
        while True:
            before = self.cursor
            try:
                await self.ship_once()
            except Exception:
                log.exception("usage export round failed; retrying")
            if self.cursor == before:
                await asyncio.sleep(self.interval_s)

    async def ship_once(self, deadline: float | None = None) -> int:
        """Deliver what the spool holds past the cursor; the number of events delivered.
        With ``deadline`` (loop time) it gives up retrying then (the cursor stays)."""
        shipped = 0
        for batch in await asyncio.to_thread(read_spool, self.spool, self.cursor, self.batch_max):
            if batch.events and not await self._post(batch_body(batch.events), deadline):
                return shipped
            await asyncio.to_thread(write_cursor, self.cursor_file, batch.cursor)
            self.cursor = batch.cursor
            self.delivered += len(batch.events)
            self.on_delivered(len(batch.events))
            shipped += len(batch.events)
        return shipped

    async def _post(self, body: bytes, deadline: float | None) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                async with self._session.post(self.url, data=body, headers=self._headers) as r:
                    if 200 <= r.status < 300:
                        return True
                    reason = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            self.failures += 1
            self.on_failure()
            log.warning(
                "usage export to %s failed (%s); retrying in %.1fs", self.url, reason, delay
            )
            if deadline is not None and loop.time() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(self.retry_max_s, delay * 2)

    async def close(self, drain_s: float = 0.0) -> None:
        """Stop following; first try for ``drain_s`` seconds to deliver what is left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if drain_s > 0:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ship_once(loop.time() + drain_s), drain_s + 1)
        if self._session is not None:
            await self._session.close()
            self._session = None
