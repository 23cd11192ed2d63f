"""The floor of ``make bench-gateway``: the least any gateway in this language and runtime
must do for one metered, audited request, run as one process like the gateway.

Per request it makes exactly the gateway's round trips and its durable write, and nothing
else: the client's request is parsed (httptools, as the gateway's server), one Lua script
runs in Redis (``EVALSHA`` of an ``INCR``; the commands of one loop turn share one write,
as the gateway's store client does), the body goes to Triton on a kept-alive connection
and Triton's answer is parsed, one line is appended to a file and ``fsync``-ed on the
event loop's thread (the lines of one loop turn share one ``fsync``: group commit, as the
gateway's audit file), and only then the answer is sent. No key check, no license, no
JSON, no hash, no metrics, no error paths: what is left when every step of the gateway
costs nothing.

Not a fake of the gateway, and not a front anyone should run: it is the reference that
tells the gateway's own CPU per request from the cost of its sockets, wake-ups and
``fsync`` on the machine at hand, in the same run (``bench.gateway.bench`` drives it with
the same load generator as the gateway and Triton).

``python -m bench.gateway.floor --port P --redis HOST:PORT --triton HOST:PORT --audit FILE``
serves until SIGTERM; it prints ``ready`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import socket
from collections import deque
from typing import cast

import httptools
import uvloop

LUA = b"return redis.call('INCR', KEYS[1])"
COUNTER_KEY = b"modelseal-bench-floor"


def resp_command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def load_script(host: str, port: int) -> bytes:
    """``SCRIPT LOAD`` once, before serving; its SHA-1 for every ``EVALSHA`` after."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(resp_command(b"SCRIPT", b"LOAD", LUA))
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("redis closed the connection during SCRIPT LOAD")
            reply += chunk
    sha = reply.split(b"\r\n")[1]
    if sha.decode() != hashlib.sha1(LUA).hexdigest():  # noqa: S324 - Redis names scripts so
        raise RuntimeError(f"unexpected SCRIPT LOAD reply: {reply!r}")
    return sha


class RedisLink(asyncio.Protocol):
    """One pipelined connection; replies are integers, in the order of the commands."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[int]] = deque()
        self.pending: list[bytes] = []
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def call(self, command: bytes) -> asyncio.Future[int]:
        fut = self.loop.create_future()
        self.waiting.append(fut)
        if not self.pending:
            self.loop.call_soon(self._flush)
        self.pending.append(command)
        return fut

    def _flush(self) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(self.pending))
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        start = 0
        while (end := buf.find(b"\r\n", start)) >= 0:
            line = buf[start:end]
            start = end + 2
            fut = self.waiting.popleft()
            if line[:1] == b":":
                fut.set_result(int(line[1:]))
            else:
                fut.set_exception(RuntimeError(f"redis: {line!r}"))
        self.buf = buf[start:]


class HttpConnection(asyncio.Protocol):
    """A connection whose messages httptools parses (``parser``, made by the subclass);
    the body of the message being read is gathered for ``take_body``."""

    parser: httptools.HttpRequestParser | httptools.HttpResponseParser

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def take_body(self) -> bytes:
        body = b"".join(self.body)
        self.body.clear()
        return body


class TritonLink(HttpConnection):
    """One kept-alive HTTP/1.1 connection to Triton, one request at a time."""

    def __init__(self, pool: TritonPool) -> None:
        super().__init__()
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        answer, self.answer = self.answer, None
        body = self.take_body()
        self.pool.idle.append(self)
        if answer is not None:
            answer.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("triton closed the connection"))

    def send(self, request: bytes) -> asyncio.Future[bytes]:
        assert self.transport is not None
        self.answer = self.pool.loop.create_future()
        self.transport.write(request)
        return self.answer


class TritonPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.host, self.port = host, port
        self.idle: list[TritonLink] = []

    async def link(self) -> TritonLink:
        if self.idle:
            return self.idle.pop()
        _, link = await self.loop.create_connection(lambda: TritonLink(self), self.host, self.port)
        return link


class AuditFile:
    """Appended lines, durable (``fsync``) before their futures are done; one write and one
    ``fsync`` for all the lines of a loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str) -> None:
        self.loop = loop
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.lines: list[bytes] = []
        self.done: list[asyncio.Future[None]] = []

    def append(self, line: bytes) -> asyncio.Future[None]:
        fut = self.loop.create_future()
        if not self.lines:
            self.loop.call_soon(self._commit)
        self.lines.append(line)
        self.done.append(fut)
        return fut

    def _commit(self) -> None:
        os.write(self.fd, b"".join(self.lines))
        os.fsync(self.fd)
        done, self.done = self.done, []
        self.lines.clear()
        for fut in done:
            fut.set_result(None)


class Front(HttpConnection):
    """One client connection: requests in turn, each answered once its line is durable."""

    def __init__(self, floor: Floor) -> None:
        super().__init__()
        self.floor = floor
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        self.floor.loop.create_task(self.serve(self.take_body()))

    async def serve(self, body: bytes) -> None:
        floor = self.floor
        count = await floor.redis.call(floor.evalsha)
        link = await floor.triton.link()
        answer = await link.send(floor.triton_head % len(body) + body)
        await floor.audit.append(b'{"n":%d,"in":%d,"out":%d}\n' % (count, len(body), len(answer)))
        assert self.transport is not None
        self.transport.write(ANSWER_HEAD % len(answer) + answer)


ANSWER_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


class Floor:
    def __init__(self, loop: asyncio.AbstractEventLoop, args: argparse.Namespace) -> None:
        self.loop = loop
        redis_host, redis_port = args.redis.rsplit(":", 1)
        triton_host, triton_port = args.triton.rsplit(":", 1)
        sha = load_script(redis_host, int(redis_port))
        self.evalsha = resp_command(b"EVALSHA", sha, b"1", COUNTER_KEY)
        self.redis_addr = (redis_host, int(redis_port))
        self.redis = RedisLink(loop)
        self.triton = TritonPool(loop, triton_host, int(triton_port))
        self.triton_head = (
            f"POST {args.path} HTTP/1.1\r\nHost: {args.triton}\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        ).encode()
        self.audit = AuditFile(loop, args.audit)

    async def serve(self, port: int) -> None:
        await self.loop.create_connection(lambda: self.redis, *self.redis_addr)
        server = await self.loop.create_server(lambda: Front(self), "127.0.0.1", port)
        stop = self.loop.create_future()
        self.loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        print("ready", flush=True)
        await stop
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True, help="HOST:PORT")
    parser.add_argument("--triton", required=True, help="HOST:PORT of Triton's HTTP endpoint")
    parser.add_argument("--path", default="/v2/models/identity/infer")
    parser.add_argument("--audit", required=True, help="the file the lines are appended to")
    args = parser.parse_args(argv)

    async def run() -> None:
        await Floor(asyncio.get_running_loop(), args).serve(args.port)

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
