"""Parallel range requests for big https/s3 bundles: bytes in order, bounded buffers,
retries, refusals (wrong status, a bundle replaced mid-fetch), and an unseal through a
real local HTTP server that serves ranges. S3 ranges: tests/integration."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal.crypto.stream import SecretBytes
from modelseal.crypto.testing import make_bundle
from modelseal.sources import SourceError, open_source, ranged
from modelseal.sources.ranged import RangedReader
from modelseal.unsealer import engine

KiB = 1024
PAYLOAD = os.urandom(3 * 1024 * KiB + 37)


def read_all(stream: object, bufsize: int = 50_001) -> bytes:
    out = bytearray()
    buf = bytearray(bufsize)
    while True:
        n = stream.readinto(buf)  # type: ignore[attr-defined]
        if not n:
            return bytes(out)
        out += buf[:n]


class Tracked:
    """fetch() over PAYLOAD that records how many parts are held at once."""

    def __init__(self, fail_once: set[int] | None = None, fail_always: int = -1) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.fail_once = set(fail_once or ())
        self.fail_always = fail_always

    def __call__(self, start: int, view: memoryview) -> None:
        with self.lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            fail = start in self.fail_once or start == self.fail_always
            self.fail_once.discard(start)
        try:
            if fail:
                raise OSError("connection reset")
            view[:] = PAYLOAD[start : start + len(view)]
        finally:
            with self.lock:
                self.active -= 1


@pytest.mark.parametrize(("parallel", "part"), [(1, 64 * KiB), (3, 64 * KiB), (8, 1000_003)])
def test_bytes_arrive_in_order(parallel: int, part: int) -> None:
    fetch = Tracked()
    reader = RangedReader("t", len(PAYLOAD), fetch, parallel=parallel, part_size=part)
    try:
        out = bytearray()
        view = memoryview(bytearray(77_777))
        while n := reader.read_into(view):
            out += view[:n]
    finally:
        reader.close()
    assert bytes(out) == PAYLOAD
    assert fetch.max_active <= parallel
    assert reader.buffer_bytes == (parallel + 1) * part


def test_transient_failure_is_retried() -> None:
    fetch = Tracked(fail_once={2 * 64 * KiB})
    reader = RangedReader("t", len(PAYLOAD), fetch, parallel=3, part_size=64 * KiB)
    try:
        out = bytearray()
        view = memoryview(bytearray(64 * KiB))
        while n := reader.read_into(view):
            out += view[:n]
    finally:
        reader.close()
    assert bytes(out) == PAYLOAD


def test_persistent_failure_fails_the_stream() -> None:
    fetch = Tracked(fail_always=5 * 64 * KiB)
    stream = ranged.ranged_stream(
        "https://x/b", len(PAYLOAD), fetch, errors=(OSError,), timeout_s=1, part_size=64 * KiB
    )
    with stream, pytest.raises(SourceError, match="part 5 failed: OSError"):
        read_all(stream)


# ------------------------------------------------------------------ a range server


class RangeHandler(http.server.BaseHTTPRequestHandler):
    ranges: list[str] = []  # noqa: RUF012 - per test, reset by the fixture

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = self.server.payload  # type: ignore[attr-defined]
        etag = '"v1"'
        rng = self.headers.get("Range")
        if self.path.startswith("/changing") and rng:
            etag = '"v2"'  # the object was replaced after the first response
        if rng:
            type(self).ranges.append(rng)
            if self.path.startswith("/slow-ranges"):
                time.sleep(0.2)  # as a server that reads the whole object for each range
            if self.headers.get("If-Match") not in (None, etag):
                self.send_response(412)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng)
            assert m
            start, end = int(m.group(1)), int(m.group(2))
            if self.path.startswith("/ignores-ranges"):
                start, end = 0, len(body) - 1
                self.send_response(200)
            else:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
            chunk = body[start : end + 1]
        else:
            self.send_response(200)
            chunk = body
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        # the client may give up on a range (a failed stream closes the others)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(chunk)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(payload: bytes) -> Iterator[str]:
    server = Server(("127.0.0.1", 0), RangeHandler)
    server.payload = payload  # type: ignore[attr-defined]
    RangeHandler.ranges = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranged, "MIN_RANGED_SIZE", 1024 * KiB)
    monkeypatch.setattr(ranged, "DEFAULT_PART_SIZE", 256 * KiB)
    monkeypatch.setattr(ranged, "WAIT_FRACTION", 0.0)  # ranged from the first byte


@pytest.fixture
def url(small_parts: None) -> Iterator[str]:
    yield from serve(PAYLOAD)


def test_http_big_bundle_comes_in_ranges(url: str) -> None:
    with open_source(f"{url}/b.mseal", allow_http=True) as stream:
        assert stream.buffer_bytes == (ranged.DEFAULT_PARALLEL + 1) * 256 * KiB
        assert read_all(stream) == PAYLOAD
    assert len(RangeHandler.ranges) == -(-len(PAYLOAD) // (256 * KiB))


def test_http_small_bundle_is_one_stream(small_parts: None) -> None:
    for base in serve(PAYLOAD[: 512 * KiB]):
        with open_source(f"{base}/b.mseal", allow_http=True) as stream:
            assert stream.buffer_bytes == 0
            assert read_all(stream) == PAYLOAD[: 512 * KiB]
    assert RangeHandler.ranges == []


def test_http_bundle_replaced_mid_fetch_is_refused(url: str) -> None:
    with (
        open_source(f"{url}/changing/b.mseal", allow_http=True) as stream,
        pytest.raises(SourceError, match="HTTP 412"),
    ):
        read_all(stream)


def test_http_server_ignoring_ranges_is_refused(url: str) -> None:
    with (
        open_source(f"{url}/ignores-ranges/b.mseal", allow_http=True) as stream,
        pytest.raises(SourceError, match="not the range asked for"),
    ):
        read_all(stream)


def test_unseal_through_ranged_http(small_parts: None) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or engine.filesystem_type(shm) != "tmpfs":
        pytest.skip("needs tmpfs at /dev/shm")
    key = os.urandom(32)
    files = {"m/1/w.bin": os.urandom(2 * 1024 * KiB), "m/config.pbtxt": b"name: 'm'\n"}
    b = make_bundle(files, SecretBytes(key), chunk_size=64 * KiB)
    dest_parent = shm / f"modelseal-test-{uuid.uuid4().hex[:10]}"
    dest_parent.mkdir()
    try:
        for base in serve(b.data):
            with open_source(f"{base}/b.mseal", allow_http=True) as stream:
                report = engine.unseal_stream(
                    stream,
                    dest_parent / "r",
                    lambda env: SecretBytes(key),
                    engine.UnsealOptions(pinned_digest=b.digest, workers=2),
                )
        assert report.digest is not None
        for path, data in files.items():
            assert (dest_parent / "r" / path).read_bytes() == data
        assert len(RangeHandler.ranges) >= 8
    finally:
        shutil.rmtree(dest_parent, ignore_errors=True)


def test_bytesio_has_no_source_buffers() -> None:
    assert getattr(io.BytesIO(b""), "buffer_bytes", 0) == 0


# ------------------------------------------------------------------ kept-alive connections


class KeepAliveHandler(RangeHandler):
    """HTTP/1.1: the connection stays open between requests (unless `close_every` says)."""

    protocol_version = "HTTP/1.1"
    peers: list[tuple[str, int]] = []  # noqa: RUF012 - per test, reset there
    close_every = 0  # close the connection after every n-th range (0: never)

    def do_GET(self) -> None:
        type(self).peers.append(self.client_address)
        super().do_GET()
        n = len(type(self).ranges)
        if self.headers.get("Range") and self.close_every and n % self.close_every == 0:
            self.close_connection = True


def serve_keepalive(payload: bytes, close_every: int) -> Iterator[str]:
    server = Server(("127.0.0.1", 0), KeepAliveHandler)
    server.payload = payload  # type: ignore[attr-defined]
    RangeHandler.ranges = []
    KeepAliveHandler.peers = []
    KeepAliveHandler.close_every = close_every
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_ranges_reuse_one_connection_per_thread(small_parts: None) -> None:
    for base in serve_keepalive(PAYLOAD, close_every=0):
        with open_source(f"{base}/b.mseal", allow_http=True) as stream:
            assert read_all(stream) == PAYLOAD
    parts = -(-len(PAYLOAD) // (256 * KiB))
    assert len(RangeHandler.ranges) == parts
    # the first (unranged) request, then at most one connection per fetch thread
    assert len(set(KeepAliveHandler.peers)) <= 1 + ranged.DEFAULT_PARALLEL
    assert len(KeepAliveHandler.peers) == 1 + parts


def test_http_ranges_survive_the_server_closing_kept_connections(small_parts: None) -> None:
    for base in serve_keepalive(PAYLOAD, close_every=3):
        with open_source(f"{base}/b.mseal", allow_http=True) as stream:
            assert read_all(stream) == PAYLOAD
    # every part asked for once: a closed kept connection is replaced, not a failed part
    assert len(RangeHandler.ranges) == -(-len(PAYLOAD) // (256 * KiB))


# ------------------------------------------------------------------ one stream first


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def adaptive(
    clock: Clock, wait_per_read: float, probe: int = 256 * KiB, fraction: float = 0.5
) -> tuple[ranged.AdaptiveReader, list[int], list[bool]]:
    """An AdaptiveReader over PAYLOAD whose first stream takes `wait_per_read` per read."""
    pos = [0]
    starts: list[int] = []
    closed = [False]

    def first_read_into(view: memoryview) -> int:
        clock.now += wait_per_read
        n = min(len(view), 40 * KiB, len(PAYLOAD) - pos[0])
        view[:n] = PAYLOAD[pos[0] : pos[0] + n]
        pos[0] += n
        return n

    def first_close() -> None:
        closed[0] = True

    def start_ranged(offset: int) -> RangedReader:
        starts.append(offset)
        return RangedReader(
            "t", len(PAYLOAD), Tracked(), parallel=2, part_size=64 * KiB, start=offset
        )

    reader = ranged.AdaptiveReader(
        "t",
        len(PAYLOAD),
        first_read_into,
        first_close,
        start_ranged,
        probe_bytes=probe,
        wait_fraction=fraction,
        clock=clock,
    )
    return reader, starts, closed


def consume(reader: ranged.AdaptiveReader, clock: Clock, work_per_read: float) -> bytes:
    out = bytearray()
    view = memoryview(bytearray(50_000))
    try:
        while n := reader.read_into(view):
            out += view[:n]
            clock.now += work_per_read  # the consumer's own time (decrypt, write)
    finally:
        reader.close()
    return bytes(out)


def test_a_stream_that_keeps_up_stays_one_stream() -> None:
    clock = Clock()
    reader, starts, _closed = adaptive(clock, wait_per_read=1.0)
    assert consume(reader, clock, work_per_read=3.0) == PAYLOAD  # waits 25% of the time
    assert starts == []
    assert reader.switched_at is None


def test_a_stream_the_consumer_waits_on_goes_ranged_after_one_window() -> None:
    clock = Clock()
    reader, starts, closed = adaptive(clock, wait_per_read=3.0)
    assert consume(reader, clock, work_per_read=1.0) == PAYLOAD  # waits 75% of the time
    assert closed == [True]
    # the first window (256 KiB, in 40 KiB reads: 7 reads) came from the first stream
    assert starts == [7 * 40 * KiB]
    assert reader.switched_at == 7 * 40 * KiB


def test_wait_fraction_zero_is_ranged_from_the_start() -> None:
    clock = Clock()
    reader, starts, closed = adaptive(clock, wait_per_read=0.0, fraction=0.0)
    assert consume(reader, clock, work_per_read=1.0) == PAYLOAD
    assert starts == [0]
    assert closed == [True]


def test_ranged_reader_from_an_offset() -> None:
    start = 123_457
    reader = RangedReader("t", len(PAYLOAD), Tracked(), parallel=3, part_size=100_000, start=start)
    try:
        out = bytearray()
        view = memoryview(bytearray(65_536))
        while n := reader.read_into(view):
            out += view[:n]
    finally:
        reader.close()
    assert bytes(out) == PAYLOAD[start:]


def test_http_big_bundle_from_a_fast_server_stays_one_stream(
    small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranged, "WAIT_FRACTION", 2.0)  # can never be reached: one stream
    for base in serve(PAYLOAD):
        with open_source(f"{base}/b.mseal", allow_http=True) as stream:
            assert stream.buffer_bytes == (ranged.DEFAULT_PARALLEL + 1) * 256 * KiB
            assert read_all(stream) == PAYLOAD
    assert RangeHandler.ranges == []


def test_http_switch_mid_stream_gives_every_byte_once(
    small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # any wait at all is "too much": one window from the first stream, then ranges (any
    # sampled rate beats the stream)
    monkeypatch.setattr(ranged, "WAIT_FRACTION", 1e-12)
    monkeypatch.setattr(ranged, "PROBE_BYTES", 300 * KiB)
    monkeypatch.setattr(ranged, "RANGED_MARGIN", 0.0)
    for base in serve(PAYLOAD):
        with open_source(f"{base}/b.mseal", allow_http=True) as stream:
            assert read_all(stream) == PAYLOAD
            switched = stream.reader.switched_at
    assert switched is not None and 300 * KiB <= switched < len(PAYLOAD)
    starts = [int(r.split("=")[1].split("-")[0]) for r in RangeHandler.ranges]
    assert min(starts) == switched  # the ranges begin where the first stream stopped
    # the sample (DEFAULT_PARALLEL parts from there, at once), then every part from there
    sample = [switched + i * 256 * KiB for i in range(ranged.DEFAULT_PARALLEL)]
    assert sorted(starts[: len(sample)]) == sample
    assert all(starts.count(s) == 2 for s in sample)
    assert len(starts) == len(sample) + -(-(len(PAYLOAD) - switched) // (256 * KiB))


def test_http_server_slow_at_ranges_keeps_one_stream(
    small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream is what the reader waits on, but the sample says ranges would be slower
    (each range takes the server 0.2 s, as moto reading the whole object): the stream stays
    to the end, and only the sample's parts were asked for as ranges."""
    monkeypatch.setattr(ranged, "WAIT_FRACTION", 1e-12)
    monkeypatch.setattr(ranged, "PROBE_BYTES", 300 * KiB)
    for base in serve(PAYLOAD):
        with open_source(f"{base}/slow-ranges/b.mseal", allow_http=True) as stream:
            assert read_all(stream) == PAYLOAD
            reader = stream.reader
    assert reader.switched_at is None
    assert reader.sampled is not None and reader.sampled[1] < reader.sampled[0]
    assert len(RangeHandler.ranges) == ranged.DEFAULT_PARALLEL


def test_ranges_sampled_faster_switch_slower_stay_for_good() -> None:
    for rate, switches in ((1e12, True), (1.0, False)):
        clock = Clock()
        reader, starts, _closed = adaptive(clock, wait_per_read=3.0)
        samples: list[int] = []

        def sampled(offset: int, rate: float = rate, samples: list[int] = samples) -> float:
            samples.append(offset)
            return rate

        reader._ranged_rate = sampled
        assert consume(reader, clock, work_per_read=1.0) == PAYLOAD
        assert samples == [7 * 40 * KiB]  # once, where the first slow window ended
        assert (starts == [7 * 40 * KiB]) is switches
        assert (reader.switched_at is not None) is switches


def test_a_failed_sample_keeps_the_stream() -> None:
    clock = Clock()
    reader, starts, _closed = adaptive(clock, wait_per_read=3.0)

    def broken(offset: int) -> float:
        raise OSError("connection reset")

    reader._ranged_rate = broken
    assert consume(reader, clock, work_per_read=1.0) == PAYLOAD
    assert starts == [] and reader.sampled == (reader.sampled[0], 0.0)


def test_one_slow_window_is_not_enough_when_two_are_asked_for() -> None:
    clock = Clock()
    waits = iter([3.0] * 7 + [0.1] * 7 + [3.0] * 7 + [3.0] * 7)  # slow, fast, slow, slow
    reader, starts, _closed = adaptive(clock, wait_per_read=0.0)
    reader._windows = 2
    first = reader._first
    assert first is not None

    def varying(view: memoryview) -> int:
        clock.now += next(waits, 3.0)
        return first(view)

    reader._first = varying
    assert consume(reader, clock, work_per_read=1.0) == PAYLOAD
    assert starts == [4 * 7 * 40 * KiB]  # after the second slow window in a row


def test_the_stream_is_judged_by_its_own_rate_not_the_consumers_pace() -> None:
    """The stream gives 40 KiB per 3 s of waiting in its reads, the consumer then works 1 s:
    the stream's own rate is 40/3 KiB/s, the pipeline's 40/4. A sample of 14 KiB/s beats
    the pipeline's pace by more than the margin but not the stream's rate: it stays (the
    sample is taken while the consumer waits, so only the stream's own rate compares)."""
    clock = Clock()
    reader, starts, _closed = adaptive(clock, wait_per_read=3.0)
    reader._ranged_rate = lambda offset: 14 * KiB
    assert consume(reader, clock, work_per_read=1.0) == PAYLOAD
    assert starts == []
    assert reader.sampled is not None
    assert reader.sampled[0] == pytest.approx(40 * KiB / 3)
    assert 1.25 * 40 * KiB / 4 < reader.sampled[1] < 1.25 * reader.sampled[0]


def test_the_sample_fetches_its_parts_at_once() -> None:
    """Each fetch waits until all the sample's parts have started: fetched one after the
    other, the first would wait for ever (here: fail after 5 s)."""
    parallel, part = 4, 1000
    barrier = threading.Barrier(parallel, timeout=5)
    asked: list[tuple[int, int]] = []

    def fetch(start: int, view: memoryview) -> None:
        asked.append((start, len(view)))
        barrier.wait()
        view[:] = PAYLOAD[start : start + len(view)]

    rate = ranged.sample_parallel(fetch, 500, 3700, parallel, part)
    # from 500: three whole parts and the 200 bytes left before the end
    assert sorted(asked) == [(500, 1000), (1500, 1000), (2500, 1000), (3500, 200)]
    assert rate > 0


def test_a_failing_sample_part_fails_the_sample() -> None:
    def fetch(start: int, view: memoryview) -> None:
        if start:
            raise SourceError("range refused: 412")

    with pytest.raises(SourceError, match="412"):
        ranged.sample_parallel(fetch, 0, 10_000, 4, 1000)
