"""The bounded buffer pool and the one read loop that feeds a worker pool.

`open_payload` and `digest_records` (crypto.pipeline) and `seal_payload` (crypto.seal)
keep at most `window` (record, plaintext) buffer pairs (`Slots`) whatever the model's
size; one thread reads records into free slots in order and `read_records_in_parallel`
hands each to a thread pool. Pure: reads only the stream it is given.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .errors import TruncatedError
from .format import TAG_SIZE, CoreHeader, ReadStream

Progress = Callable[[int], None]
Slot = tuple[bytearray, bytearray]  # (record buffer, plaintext buffer)
#: Processes record i held in the slot (its first `rec_len` bytes); gives the slot back.
RecordWork = Callable[[int, Slot, int], None]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def readinto_exact(stream: ReadStream, view: memoryview, what: str) -> None:
    got = 0
    total = len(view)
    while got < total:
        n = stream.readinto(view[got:])
        if not n:
            raise TruncatedError(f"bundle ends inside {what} (truncated)")
        got += n


_ZERO_BLOCK = memoryview(bytes(1 << 20))


def wipe(view: memoryview | bytearray) -> None:
    """Overwrite with zeros in place, without a temporary the size of the buffer."""
    target = memoryview(view).cast("B")
    for off in range(0, len(target), len(_ZERO_BLOCK)):
        n = min(len(_ZERO_BLOCK), len(target) - off)
        target[off : off + n] = _ZERO_BLOCK[:n]


class Slots:
    """A fixed pool of (record, plaintext) buffer pairs."""

    def __init__(self, count: int, chunk_size: int) -> None:
        self.free: queue.Queue[Slot] = queue.Queue()
        for _ in range(count):
            self.free.put((bytearray(chunk_size + TAG_SIZE), bytearray(chunk_size)))

    def take(self) -> Slot:
        return self.free.get()

    def give(self, slot: Slot) -> None:
        self.free.put(slot)

    def scrub(self) -> None:
        """Zero the plaintext buffers (best effort: they held model bytes)."""
        while True:
            try:
                _, plain = self.free.get_nowait()
            except queue.Empty:
                return
            wipe(plain)


def read_record(
    stream: ReadStream,
    core: CoreHeader,
    i: int,
    slots: Slots,
    slot: Slot,
) -> int:
    """Read record `i` into the slot's record buffer; its length. On failure the slot goes
    back to the pool."""
    rec_len = core.chunk_plain_len(i) + TAG_SIZE
    try:
        readinto_exact(stream, memoryview(slot[0])[:rec_len], f"chunk {i}")
    except BaseException:
        slots.give(slot)
        raise
    return rec_len


class FirstFailure:
    def __init__(self) -> None:
        self.exc: BaseException | None = None
        self.lock = threading.Lock()

    def set(self, exc: BaseException) -> None:
        with self.lock:
            if self.exc is None:
                self.exc = exc

    def check(self) -> None:
        if self.exc is not None:
            raise self.exc


def read_records_in_parallel(
    stream: ReadStream,
    core: CoreHeader,
    slots: Slots,
    failure: FirstFailure,
    work: RecordWork,
    *,
    first: int,
    workers: int,
    name: str,
) -> None:
    """Read records `first`.. of the chunk stream in order and run `work` on each in a pool.

    A record is read into a free slot (waiting for one: memory stays bounded) and handed
    to `work`, which must give the slot back. Reading stops at the first failure, a
    worker's or its own (recorded in `failure`); returns when every submitted record is
    done. The caller then calls `failure.check()`.
    """
    if first >= core.chunk_count:
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        try:
            for i in range(first, core.chunk_count):
                slot = slots.take()
                if failure.exc is not None:
                    slots.give(slot)
                    break
                rec_len = read_record(stream, core, i, slots, slot)
                pool.submit(work, i, slot, rec_len)
        except BaseException as exc:
            failure.set(exc)
