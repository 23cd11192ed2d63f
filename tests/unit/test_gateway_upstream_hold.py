"""The gateway's HTTP pool to Triton (issue 12, High 15): an inference POST whose pooled
connection drops after it was written is never sent again; a timed-out exchange goes on
until the server answers, so that the caller can hold its concurrency slot until then.

The server here is a loopback TCP server that misbehaves on purpose (drops a connection
after reading a request, or holds its answer until the test lets it go): the faults a
real Triton shows only by crashing or by a slow model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from modelseal.gateway.upstream import Upstream, UpstreamError

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class Injector:
    """Answers the first request of each connection; then, per ``mode``: ``drop`` reads
    the next request and closes without answering; ``hold`` answers every request only
    once ``release`` is set."""

    mode: str
    seen: list[bytes] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.seen.append(head.split(b" ")[0])
                if self.mode == "drop" and served >= 1:
                    writer.close()
                    return
                if self.mode == "hold":
                    await self.release.wait()
                writer.write(OK)
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def upstream_for() -> AsyncIterator[object]:
    servers: list[asyncio.Server] = []
    upstreams: list[Upstream] = []
    injectors: list[Injector] = []

    async def make(mode: str, timeout_s: float = 30.0) -> tuple[Injector, Upstream]:
        injector = Injector(mode)
        injectors.append(injector)
        server = await asyncio.start_server(injector.handle, "127.0.0.1", 0)
        servers.append(server)
        injector.port = server.sockets[0].getsockname()[1]
        up = Upstream(f"http://127.0.0.1:{injector.port}", "127.0.0.1:1", timeout_s=timeout_s)
        await up.start()
        upstreams.append(up)
        return injector, up

    yield make
    for up in upstreams:
        await up.close()
    for server in servers:
        server.close()
    for injector in injectors:
        injector.release.set()
        for writer in injector.writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in injector.writers), return_exceptions=True)
    for server in servers:
        await server.wait_closed()


async def test_an_inference_is_never_sent_twice(upstream_for: object) -> None:
    injector, up = await upstream_for("drop")  # type: ignore[operator]
    first = await up.request("POST", "/v2/models/m/infer", b"{}")
    assert first.status == 200
    with pytest.raises(UpstreamError) as err:  # pooled connection dropped after the write
        await up.request("POST", "/v2/models/m/infer", b"{}")
    assert not err.value.unsent  # it may have run: not refundable
    assert injector.seen == [b"POST", b"POST"]  # received once, never re-sent


async def test_a_get_on_a_dropped_pooled_connection_is_retried(upstream_for: object) -> None:
    injector, up = await upstream_for("drop")  # type: ignore[operator]
    assert (await up.request("GET", "/v2/models/m")).status == 200
    assert (await up.request("GET", "/v2/models/m")).status == 200  # on a fresh connection
    assert injector.seen == [b"GET", b"GET", b"GET"]


async def test_a_timed_out_exchange_goes_on_until_the_answer(upstream_for: object) -> None:
    injector, up = await upstream_for("hold", timeout_s=0.05)  # type: ignore[operator]
    with pytest.raises(UpstreamError) as err:
        await up.request("POST", "/v2/models/m/infer", b"{}")
    assert err.value.timeout and not err.value.unsent
    running = err.value.running
    assert running is not None
    await asyncio.sleep(0)
    assert not running.done()  # the server still holds the answer
    injector.release.set()
    answer = await asyncio.wait_for(running, timeout=30)
    assert answer.status == 200
    assert injector.seen == [b"POST"]


# -- the fast path (a pooled connection ready: no task per request, issue 13 §2) ----------


async def test_a_timed_out_exchange_on_a_pooled_connection_goes_on(upstream_for: object) -> None:
    injector, up = await upstream_for("hold", timeout_s=0.05)  # type: ignore[operator]
    injector.release.set()
    assert (await up.request("POST", "/v2/models/m/infer", b"{}")).status == 200  # pooled now
    injector.release.clear()
    with pytest.raises(UpstreamError) as err:
        await up.request("POST", "/v2/models/m/infer", b"{}")
    assert err.value.timeout and not err.value.unsent
    running = err.value.running
    assert running is not None
    await asyncio.sleep(0.01)
    assert not running.done()  # the server still holds the answer
    injector.release.set()
    answer = await asyncio.wait_for(running, timeout=30)
    assert answer.status == 200
    # the connection went back to the pool with its slot: the next request reuses it
    assert (await up.request("POST", "/v2/models/m/infer", b"{}")).status == 200
    assert injector.seen == [b"POST", b"POST", b"POST"]
    assert len(injector.writers) == 1


async def test_cancelling_a_held_exchange_drops_its_connection(upstream_for: object) -> None:
    injector, up = await upstream_for("hold", timeout_s=0.05)  # type: ignore[operator]
    injector.release.set()
    assert (await up.request("POST", "/v2/models/m/infer", b"{}")).status == 200
    injector.release.clear()
    with pytest.raises(UpstreamError) as err:
        await up.request("POST", "/v2/models/m/infer", b"{}")
    running = err.value.running
    assert running is not None
    running.cancel()  # what Gateway._hold does after quota_lease_s
    await asyncio.sleep(0.01)
    injector.release.set()
    # a new connection: the held one was closed, and its slot given back
    assert (await up.request("POST", "/v2/models/m/infer", b"{}")).status == 200
    assert len(injector.writers) == 2


async def test_a_cancelled_caller_gives_its_slot_back(upstream_for: object) -> None:
    injector, up = await upstream_for("hold")  # type: ignore[operator]
    up.connections = 1
    await up.close()
    await up.start()  # one connection at most
    injector.release.set()
    assert (await up.request("POST", "/v2/models/m/infer", b"{}")).status == 200
    injector.release.clear()
    caller = asyncio.ensure_future(up.request("POST", "/v2/models/m/infer", b"{}"))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    injector.release.set()
    answers = await asyncio.wait_for(
        asyncio.gather(*(up.request("POST", "/v2/models/m/infer", b"{}") for _ in range(3))),
        timeout=30,
    )
    assert [a.status for a in answers] == [200, 200, 200]
