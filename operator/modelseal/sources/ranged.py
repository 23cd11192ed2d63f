"""A sequential stream assembled from parallel range requests (large https/s3 bundles).

One TCP stream rarely fills a fast link (window, per-connection throttling at the far
end), so a big bundle is fetched as `parts` of `part_size` bytes by `parallel` threads,
each with its own connection, and handed to the reader strictly in order. Memory is fixed:
`parallel + 1` part buffers (`buffer_bytes`), whatever the bundle's size; a fetcher waits
for a free buffer before it starts the next part, and parts are started in order, so the
reader never waits behind a part that has not been asked for.

`fetch(start, view)` must fill `view` with the bytes at [start, start + len(view)) or
raise; a short or failed fetch fails the stream with SourceError (after `retries` more
tries of that part). Integrity does not depend on this layer: every chunk is
authenticated and the digest pinned by the reader above.

Ranges are not free (a thread and a request per part, one more copy of every byte, and
some servers read the whole object for each range), so `ranged_stream` with `first` reads
the first, unranged response in order and goes ranged only when that one stream is what
the consumer waits on and `parallel` parts, fetched at once as a sample, say that ranges
would be faster (`AdaptiveReader`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .base import SourceError, SourceStream

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_PARALLEL = 4
MIN_RANGED_SIZE = 64 * MiB  # below this one stream is as fast
PROBE_BYTES = 32 * MiB  # AdaptiveReader: window of the first stream between two looks
WAIT_FRACTION = 0.5  # ... and the share of it spent waiting on that stream that goes ranged
SLOW_WINDOWS = 2  # ... in that many windows in a row (one can be a start-up hiccup)
#: ... and only when `parallel` parts fetched at once (the sample) beat the stream by this
RANGED_MARGIN = 1.25

Fetch = Callable[[int, memoryview], None]
#: The throughput (bytes/s) ranged fetching would give from an offset, from a sample.
RangedRate = Callable[[int], float]

log = logging.getLogger("modelseal.sources")


class _Part:
    __slots__ = ("buf", "error", "index", "length", "ready")

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self.index = -1
        self.length = 0
        self.ready = False
        self.error: BaseException | None = None


class RangedReader:
    """Reads [start, size) through `fetch` with `parallel` threads; `read_into` is sequential."""

    def __init__(
        self,
        name: str,
        size: int,
        fetch: Fetch,
        *,
        parallel: int = DEFAULT_PARALLEL,
        part_size: int = DEFAULT_PART_SIZE,
        retries: int = 2,
        start: int = 0,
    ) -> None:
        if size < 0 or part_size <= 0 or parallel <= 0 or not 0 <= start <= size:
            raise ValueError("bad ranged-reader parameters")
        self.name = name
        self.size = size
        self.start = start
        self.part_size = part_size
        self.parts = -(-(size - start) // part_size)
        self.buffer_bytes = (parallel + 1) * part_size
        self._fetch = fetch
        self._retries = retries
        self._cond = threading.Condition()
        self._free = [_Part(bytearray(part_size)) for _ in range(parallel + 1)]
        self._by_index: dict[int, _Part] = {}
        self._next_to_fetch = 0
        self._next_to_read = 0
        self._offset_in_part = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"ranged-{i}", daemon=True)
            for i in range(min(parallel, max(1, self.parts)))
        ]
        for t in self._threads:
            t.start()

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._free or self._next_to_fetch >= self.parts):
                    if self._next_to_fetch >= self.parts:
                        return
                    self._cond.wait()
                if self._closed:
                    return
                part = self._free.pop()
                index = self._next_to_fetch
                self._next_to_fetch += 1
                part.index, part.ready, part.error = index, False, None
                part.length = min(self.part_size, self.size - self.start - index * self.part_size)
                self._by_index[index] = part
            error: BaseException | None = None
            for _attempt in range(self._retries + 1):
                try:
                    self._fetch(
                        self.start + index * self.part_size, memoryview(part.buf)[: part.length]
                    )
                    error = None
                    break
                except BaseException as exc:
                    error = exc
                    if self._closed:
                        break
            with self._cond:
                part.error = error
                part.ready = True
                self._cond.notify_all()

    def read_into(self, view: memoryview) -> int:
        with self._cond:
            if self._next_to_read >= self.parts:
                return 0
            index = self._next_to_read
            while not self._closed and not (
                index in self._by_index and self._by_index[index].ready
            ):
                self._cond.wait()
            if self._closed:
                raise SourceError(f"{self.name}: stream closed")
            part = self._by_index[index]
        if part.error is not None:
            err = part.error
            if isinstance(err, (SourceError, TimeoutError)):
                raise err
            raise SourceError(
                f"{self.name}: range request for part {index} failed: "
                f"{type(err).__name__}: {str(err)[:300]}"
            ) from None
        start = self._offset_in_part
        n = min(len(view), part.length - start)
        view[:n] = memoryview(part.buf)[start : start + n]
        self._offset_in_part += n
        if self._offset_in_part == part.length:
            with self._cond:
                del self._by_index[index]
                self._free.append(part)
                self._next_to_read += 1
                self._offset_in_part = 0
                self._cond.notify_all()
        return n

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=1.0)


class AdaptiveReader:
    """The first response read in order; parallel ranges for the rest once it is the limit.

    Ranged fetching only pays where one stream is slower than the reader: it costs threads,
    requests and a copy per byte, and a server such as moto reads the whole object for every
    range. So the body of the first (unranged) response is read as it comes, and every
    `probe_bytes` the reader looks at how much of that window's wall time it spent waiting
    inside that stream's reads. Above `wait_fraction` in `slow_windows` windows in a row,
    the stream, not the consumer (decryption, writes), is the bottleneck (a busy machine can
    make one window look slow). Then `ranged_rate(offset)` (when given) fetches `parallel`
    parts at once as a sample: only if they beat the stream's own rate in that window
    (bytes over the time spent in its reads) by `RANGED_MARGIN` is the first response
    closed and the rest, [offset, size), read from a RangedReader; else the stream stays,
    for good (a server that reads the whole object for each range, as moto does, made a
    512 MiB bundle nine times slower ranged than in one stream; a server on the same two
    CPUs as the unsealer, 1.5 times slower). Below the fraction, one stream keeps up, and
    stays. `wait_fraction <= 0` goes ranged at once. Memory is bounded either way by the
    ranged reader's buffers (`buffer_bytes`, announced up front; the sample uses
    `parallel` parts' worth before them, freed before they are made).
    """

    def __init__(
        self,
        name: str,
        size: int,
        first_read_into: Callable[[memoryview], int],
        first_close: Callable[[], object],
        start_ranged: Callable[[int], RangedReader],
        *,
        probe_bytes: int,
        wait_fraction: float,
        slow_windows: int = 1,
        clock: Callable[[], float] = time.monotonic,
        ranged_rate: RangedRate | None = None,
    ) -> None:
        self.name = name
        self.size = size
        self.offset = 0
        self.switched_at: int | None = None
        self._first: Callable[[memoryview], int] | None = first_read_into
        self._first_close = first_close
        self._start_ranged = start_ranged
        self._probe = max(1, probe_bytes)
        self._fraction = wait_fraction
        self._clock = clock
        self._ranged: RangedReader | None = None
        self._window_start = clock()
        self._window_bytes = 0
        self._window_wait = 0.0
        self._windows = max(1, slow_windows)
        self._slow_windows = 0
        self._ranged_rate = ranged_rate
        #: (the stream's rate, the sampled ranged rate) in bytes/s, once sampled
        self.sampled: tuple[float, float] | None = None
        if wait_fraction <= 0:
            self._switch()

    def _switch(self) -> None:
        self._close_first()
        self.switched_at = self.offset
        self._ranged = self._start_ranged(self.offset)

    def _close_first(self) -> None:
        if self._first is not None:
            self._first = None
            with contextlib.suppress(Exception):
                self._first_close()

    def read_into(self, view: memoryview) -> int:
        if self._ranged is not None:
            n = self._ranged.read_into(view)
            self.offset += n
            return n
        if self._first is None:
            raise SourceError(f"{self.name}: stream closed")
        t0 = self._clock()
        n = self._first(view[: self.size - self.offset])
        t1 = self._clock()
        self.offset += n
        self._window_wait += t1 - t0
        self._window_bytes += n
        if n and self._window_bytes >= self._probe and self.offset < self.size:
            elapsed = t1 - self._window_start
            slow = elapsed > 0 and self._window_wait > self._fraction * elapsed
            self._slow_windows = self._slow_windows + 1 if slow else 0
            # The stream's own rate: bytes over the time spent waiting in its reads (over
            # the window's wall time it would be the consumer's pace, which the sample,
            # taken while the consumer waits, does not share).
            if self._slow_windows >= self._windows and self._ranges_pay(
                self._window_bytes / self._window_wait
            ):
                self._switch()
            else:
                self._window_start, self._window_bytes, self._window_wait = t1, 0, 0.0
        return n

    def _ranges_pay(self, stream_rate: float) -> bool:
        """Whether ranges beat the stream's `stream_rate`: sampled once; a stream kept
        after the sample is kept to the end."""
        if self._ranged_rate is None:
            return True
        if self.sampled is not None:  # sampled before, and the stream was kept
            return False
        try:
            rate = self._ranged_rate(self.offset)
        except Exception as exc:  # a failed sample: the stream that works stays
            log.warning("%s: ranged sample failed (%s); one stream kept", self.name, exc)
            rate = 0.0
        self.sampled = (stream_rate, rate)
        if rate > RANGED_MARGIN * stream_rate:
            log.info(
                "%s: ranged fetch from byte %d (one stream %.0f MB/s, ranges %.0f MB/s)",
                self.name,
                self.offset,
                stream_rate / 1e6,
                rate / 1e6,
            )
            return True
        log.info(
            "%s: one stream kept (%.0f MB/s; ranges sampled at %.0f MB/s)",
            self.name,
            stream_rate / 1e6,
            rate / 1e6,
        )
        return False

    def close(self) -> None:
        self._close_first()
        if self._ranged is not None:
            self._ranged.close()


def ranged_stream(
    name: str,
    size: int,
    fetch: Fetch,
    *,
    errors: tuple[type[BaseException], ...],
    timeout_s: float,
    parallel: int | None = None,
    part_size: int | None = None,
    on_close: Callable[[], object] | None = None,
    first: tuple[Callable[[memoryview], int], Callable[[], object]] | None = None,
) -> SourceStream:
    """A SourceStream over [0, size): parallel ranges through `fetch`.

    With `first` (the read_into and close of the first, unranged response) that response is
    read in order until it proves to be the bottleneck (AdaptiveReader). `on_close` runs
    after the readers have stopped.
    """
    par = parallel or DEFAULT_PARALLEL
    psize = part_size or DEFAULT_PART_SIZE

    def start_ranged(offset: int) -> RangedReader:
        return RangedReader(name, size, fetch, parallel=par, part_size=psize, start=offset)

    def ranged_rate(offset: int) -> float:
        """The rate of `par` parts from `offset` fetched at once, now (a sample). Taken as
        they come, not one part's rate times `par`: where the machine's CPUs, not the
        connections, limit the fetch (a server on the same two cores), parallel parts
        add nothing."""
        return sample_parallel(fetch, offset, size, par, psize)

    reader: RangedReader | AdaptiveReader
    if first is None:
        reader = start_ranged(0)
    else:
        reader = AdaptiveReader(
            name,
            size,
            first[0],
            first[1],
            start_ranged,
            probe_bytes=PROBE_BYTES,
            wait_fraction=WAIT_FRACTION,
            slow_windows=SLOW_WINDOWS,
            ranged_rate=ranged_rate,
        )

    def close() -> None:
        try:
            reader.close()
        finally:
            if on_close is not None:
                on_close()

    stream = SourceStream(
        name, reader.read_into, close, size=size, errors=errors, timeout_s=timeout_s
    )
    stream.buffer_bytes = (par + 1) * psize
    stream.reader = reader
    return stream


def sample_parallel(fetch: Fetch, offset: int, size: int, parallel: int, part_size: int) -> float:
    """Bytes per second of up to `parallel` parts from `offset` fetched at once (each by a
    thread of its own, as the RangedReader would); the first failure is raised."""
    spans = [
        (start, min(part_size, size - start))
        for start in range(offset, min(size, offset + parallel * part_size), part_size)
    ]
    errors: list[BaseException] = []

    def one(start: int, length: int) -> None:
        try:
            fetch(start, memoryview(bytearray(length)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=span, name="ranged-sample") for span in spans]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = max(time.monotonic() - t0, 1e-6)
    if errors:
        raise errors[0]
    return sum(length for _, length in spans) / elapsed


def content_range_ok(header: Any, start: int, end: int, size: int) -> bool:
    """True when a Content-Range header says `bytes start-end/size` (end inclusive)."""
    return str(header or "").strip() == f"bytes {start}-{end}/{size}"
