"""The gateway's HTTP/1.1 server (``modelseal.gateway.http_server``) over real sockets,
with a handler of the test's own: parsing limits, deadlines, pipelining, keep-alive,
``Expect: 100-continue``, HEAD, shutdown, and the audit of what no handler saw. The
gateway's own routes over it are tested in ``tests/integration/test_gateway_bad_input.py``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from modelseal.gateway.http_server import (
    MAX_HEADERS,
    MAX_LINE,
    BodyIncomplete,
    BodyTooLarge,
    HttpRequest,
    HttpResponse,
    HttpServer,
    Limits,
    encode_response,
    listening_socket,
)

Audited = list[tuple[str, int, str]]


@dataclass
class Running:
    server: HttpServer
    audited: Audited
    seen: list[HttpRequest] = field(default_factory=list)
    clients: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        self.clients.append(writer)
        return reader, writer


async def echo(request: HttpRequest) -> HttpResponse:
    """Answers with the method, path and body it read (a 1 s body deadline)."""
    try:
        body = await request.read(1.0)
    except BodyTooLarge:
        return HttpResponse(413, b"too large", close=True)
    except TimeoutError:
        return HttpResponse(408, b"slow", close=True)
    except BodyIncomplete:
        return HttpResponse(400, b"gone")
    if request.path == "/slow":
        await asyncio.sleep(0.2)
    text = f"{request.method} {request.path} ".encode() + body
    return HttpResponse(200, text, {"Content-Type": "text/plain"})


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[HttpRequest], Awaitable[HttpResponse]] | None = None,
    *,
    max_body: int = 1000,
    header_timeout_s: float = 0.3,
    idle_timeout_s: float = 5.0,
) -> AsyncIterator[Running]:
    audited: Audited = []
    seen: list[HttpRequest] = []

    async def handle(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return await (handler or echo)(request)

    server = HttpServer(
        handle,
        Limits(max_body=max_body, header_timeout_s=header_timeout_s, idle_timeout_s=idle_timeout_s),
        lambda route, status, reason, remote, t0: audited.append((route, status, reason)),
    )
    await server.start(listening_socket("127.0.0.1", 0, reuse_port=False))
    running = Running(server, audited, seen)
    try:
        yield running
    finally:
        await server.stop(grace_s=1.0)
        for writer in running.clients:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_response(
    reader: asyncio.StreamReader, *, no_body: bool = False
) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b"" if no_body else await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


async def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    async with serving() as srv:
        reader, writer = await srv.connect()
        writer.write(post("/slow", b"one") + post("/b", b"two") + post("/c", b"three"))
        answers = [await read_response(reader) for _ in range(3)]
        assert [a[2] for a in answers] == [b"POST /slow one", b"POST /b two", b"POST /c three"]
        assert all("connection" not in a[1] for a in answers)
        writer.write(post("/d", b"four"))  # the connection was kept
        assert (await read_response(reader))[2] == b"POST /d four"
        writer.close()


async def test_headers_split_across_reads_and_repeated_headers() -> None:
    async with serving() as srv:
        reader, writer = await srv.connect()
        for part in (b"GET /p%20q?x=1 HT", b"TP/1.1\r\nX-K: a\r\nx-k: b\r\n", b"Host: y\r\n\r\n"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.02)
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"GET /p q ")
        request = srv.seen[0]
        assert request.header_all("x-k") == ["a", "b"]
        assert request.header("x-k") == "a" and request.query == "x=1"
        assert request.header_all("missing") == []
        writer.close()


async def test_chunked_body_and_expect_continue() -> None:
    async with serving() as srv:
        reader, writer = await srv.connect()
        writer.write(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert (await read_response(reader))[2] == b"POST /c abcde"
        writer.close()


async def test_body_over_the_limit_is_not_kept_and_closes() -> None:
    async with serving(max_body=10) as srv:
        reader, writer = await srv.connect()
        writer.write(
            b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"8\r\n12345678\r\n" * 4
            + b"0\r\n\r\n"
        )
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (413, "close")
        assert await reader.read() == b""  # closed
        assert srv.seen[0]._parts == []


async def test_slow_body_meets_the_handlers_deadline() -> None:
    async with serving() as srv:
        reader, writer = await srv.connect()
        writer.write(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (408, "close")


async def test_answer_before_the_body_is_complete_closes_the_connection() -> None:
    async def refuse(request: HttpRequest) -> HttpResponse:
        return HttpResponse(401, b"no")  # without reading the body

    async with serving(refuse) as srv:
        reader, writer = await srv.connect()
        writer.write(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (401, "close")
        assert await asyncio.wait_for(reader.read(), 5) == b""


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\rX-T: c\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\x00\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\nX-A: " + b"a" * MAX_LINE + b"\r\n\r\n", "header field over"),
        (b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1\r\n\r\n", "request line over"),
        (
            b"GET / HTTP/1.1\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
            + b"\r\n",
            "more than",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "malformed",
        ),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "encoding"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "upgrade"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "malformed"),  # TLS to plain HTTP
    ],
)
async def test_malformed_requests_get_400_are_audited_and_close(raw: bytes, why: str) -> None:
    async with serving() as srv:
        reader, writer = await srv.connect()
        writer.write(raw)
        if why == "upgrade":  # the request itself is answered, then the connection ends
            assert (await read_response(reader))[0] == 200
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"]) == (400, "close")
        assert why.encode() in body.lower() or why == "malformed"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert len(srv.audited) == 1
        route, audited_status, reason = srv.audited[0]
        assert (route, audited_status) == ("malformed", 400) and why in reason.lower()


async def test_headers_that_never_complete_get_408_even_behind_a_pipelined_request() -> None:
    async with serving(header_timeout_s=0.3) as srv:
        reader, writer = await srv.connect()
        writer.write(post("/slow", b"first") + b"POST /b HTTP/1.1\r\nHost: x\r\nAuthoriz")
        assert (await read_response(reader))[2] == b"POST /slow first"
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (408, "close")
        assert [a[:2] for a in srv.audited] == [("incomplete_headers", 408)]
        assert len(srv.seen) == 1


async def test_client_leaving_half_way_through_its_headers_is_audited() -> None:
    async with serving(header_timeout_s=5) as srv:
        _, writer = await srv.connect()
        writer.write(b"GET / HTTP/1.1\r\nHo")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        for _ in range(100):
            if srv.audited:
                break
            await asyncio.sleep(0.02)
        assert [a[:2] for a in srv.audited] == [("incomplete_headers", 400)]


async def test_idle_connection_closes_and_a_silent_one_is_not_audited() -> None:
    async with serving(idle_timeout_s=0.2) as srv:
        reader, _ = await srv.connect()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert srv.audited == []


async def test_http_1_0_head_and_connection_close() -> None:
    async with serving() as srv:
        reader, writer = await srv.connect()
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await read_response(reader, no_body=True)
        assert status == 200 and int(headers["content-length"]) == len(b"HEAD /h ")
        writer.write(b"GET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        # the HEAD answer had no body: the next bytes are the GET's answer
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"], body) == (200, "close", b"GET /g ")
        reader, writer = await srv.connect()
        writer.write(b"GET /old HTTP/1.0\r\n\r\n")
        assert (await read_response(reader))[1]["connection"] == "close"


async def test_handler_failure_is_a_500_and_the_server_goes_on() -> None:
    async def broken(request: HttpRequest) -> HttpResponse:
        if request.path == "/boom":
            raise RuntimeError("boom")
        return await echo(request)

    async with serving(broken) as srv:
        reader, writer = await srv.connect()
        writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"]) == (500, "close") and b"boom" not in body
        reader, writer = await srv.connect()
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200


async def test_stop_lets_an_answer_under_way_finish_and_closes_the_rest() -> None:
    async with serving() as srv:
        busy_reader, busy_writer = await srv.connect()
        idle_reader, _ = await srv.connect()
        busy_writer.write(post("/slow", b"x"))
        await asyncio.sleep(0.05)
        await srv.server.stop(grace_s=2.0)
        status, headers, _ = await read_response(busy_reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        assert srv.server.connections == set()


def test_encode_response_refuses_a_line_break_in_a_header() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_response(
            HttpResponse(200, b"", {"X-A": "b\r\nX-Injected: 1"}), head_only=False, close=False
        )
    data = encode_response(HttpResponse(204, b"x"), head_only=True, close=False)
    assert data.startswith(b"HTTP/1.1 204 No Content\r\n") and data.endswith(b"\r\n\r\n")


async def test_body_whose_framing_breaks_gets_one_answer_from_its_handler() -> None:
    """A bad chunk in a body the handler is reading: the handler answers (it audits the
    request), no second answer or record follows, and the connection ends."""
    async with serving() as srv:
        reader, writer = await srv.connect()
        writer.write(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"zz\r\n")  # not a chunk size
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"], body) == (400, "close", b"gone")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert srv.audited == []


async def test_a_queued_request_whose_body_broke_is_not_left_waiting() -> None:
    async with serving() as srv:
        reader, writer = await srv.connect()
        writer.write(
            post("/slow", b"first")
            + b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        assert (await read_response(reader))[2] == b"POST /slow first"
        status, _, body = await read_response(reader)  # at once, not after the deadline
        assert (status, body) == (400, b"gone")
        assert srv.audited == []
