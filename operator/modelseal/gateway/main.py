"""Running the gateway: ``run(settings)`` serves until SIGTERM/SIGINT, then drains.

Ports (all from settings, 0 = any free port): ``gateway_http_port`` (KServe v2 HTTP,
default 8000), ``gateway_grpc_port`` (KServe v2 gRPC, default 8001),
``gateway_metrics_port`` (default 8002: ``/metrics``, ``/healthz`` (alive: 503 once the
audit writer or the file reload loop has stopped),
``/readyz`` (license and keys loaded, Triton ready), ``/usage`` (the counters, read-only,
for the operator's license status; a bearer token derived from the audit key:
``modelseal.store.usage_report``)). Logs are JSON lines on stderr;
stdout carries only audit records when ``audit_sink=stdout``.

Workers (``gateway_workers`` > 1, Redis store and a file or webhook audit sink only):
this process is worker 0 and starts the others (``Workers``) once its ports are bound; all
accept on the same HTTP and gRPC ports (``SO_REUSEPORT``). Each worker has its own audit
chain (``<audit file stem>-w<i>``, instance ``<instance>-w<i>``) and its own metrics port
(``gateway_metrics_port + i``); ``/readyz`` on the main metrics port is worker 0's.

Shutdown: stop accepting, let in-flight requests finish (up to 10 s), give back
concurrency slots, write a final signed audit checkpoint, flush the counter store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelseal.config import Settings
from modelseal.gateway.core import Gateway
from modelseal.gateway.grpc_front import GrpcFront
from modelseal.gateway.http_front import HttpFront, audit_unhandled
from modelseal.gateway.http_server import HttpServer, Limits, listening_socket
from modelseal.gateway.usage_export import check_usage_export, usage_shipper
from modelseal.gateway.usage_read import usage_handler
from modelseal.logging import setup_logging as json_logging
from modelseal.store.usage_report import USAGE_PATH

log = logging.getLogger("modelseal.gateway")


def setup_logging(level: str) -> None:
    json_logging(level, quiet=("aiohttp.access",))


class Servers:
    """The three listeners of one gateway; ``ports`` holds the bound port numbers."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []
        self._grpc: Any = None
        self._http: HttpServer | None = None
        self.not_ready: Callable[[], str | None] = lambda: None  # worker processes

    async def start(self) -> None:
        s = self.gw.settings
        sock = listening_socket(
            s.gateway_host, s.gateway_http_port, reuse_port=s.gateway_workers > 1
        )
        self._http = HttpServer(
            HttpFront(self.gw).handle,
            Limits(
                max_body=s.max_request_bytes,
                header_timeout_s=s.gateway_header_timeout_s,
                idle_timeout_s=s.gateway_idle_timeout_s,
            ),
            audit_unhandled(self.gw),
        )
        await self._http.start(sock)
        self.ports["http"] = self._http.port

        metrics = web.Application()
        metrics.router.add_get("/metrics", self._metrics)
        metrics.router.add_get("/healthz", self._healthz)
        metrics.router.add_get("/readyz", self._readyz)
        metrics.router.add_get(USAGE_PATH, usage_handler(self.gw))  # read-only, bearer
        mrunner = web.AppRunner(metrics, handle_signals=False, access_log=None)
        await mrunner.setup()
        await web.TCPSite(mrunner, s.gateway_host, s.gateway_metrics_port).start()
        self._runners.append(mrunner)
        self.ports["metrics"] = _bound_port(mrunner)

        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_request_bytes),
                ("grpc.max_send_message_length", max(s.max_request_bytes, 64 * 1024 * 1024)),
                ("grpc.so_reuseport", 1 if s.gateway_workers > 1 else 0),
            ]
        )
        self._grpc.add_generic_rpc_handlers((GrpcFront(self.gw).handler(),))
        self.ports["grpc"] = self._grpc.add_insecure_port(f"{s.gateway_host}:{s.gateway_grpc_port}")
        await self._grpc.start()

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=5.0)
        if self._http is not None:
            await self._http.stop(grace_s=10.0)
        for runner in self._runners:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        self.gw.metrics.audit_depth.set(self.gw.audit.depth)
        return web.Response(
            body=generate_latest(self.gw.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        problems = self.gw.liveness_problems()
        if problems:
            return web.Response(status=503, text="\n".join(problems))
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = [f.error for f in (self.gw.licenses_file, self.gw.keys_file) if f.error]
        workers = self.not_ready()
        if workers:
            problems.append(workers)
        if not problems:
            try:
                up = await self.gw.upstream.request("GET", "/v2/health/ready")
                if up.status != 200:
                    problems.append(f"Triton not ready ({up.status})")
            except Exception as exc:
                problems.append(str(exc))
        if problems:
            return web.Response(status=503, text="\n".join(str(p) for p in problems))
        return web.Response(text="ready")


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple):
            return int(addr[1])
    raise RuntimeError("gateway: no bound address")


def check_workers(settings: Settings) -> None:
    """Refuse settings under which several worker processes could not keep the guarantees."""
    if settings.gateway_workers <= 1:
        return
    if settings.quota_store != "redis":
        raise ValueError(
            f"gateway_workers={settings.gateway_workers} needs quota_store=redis: the embedded "
            "store keeps its counters in one process (its state folder is locked by the "
            "first); Redis shares exact counters between processes"
        )
    if settings.audit_sink == "stdout":
        raise ValueError(
            f"gateway_workers={settings.gateway_workers} needs audit_sink=file or webhook: "
            "each worker writes its own hash chain, and chains interleaved on one stdout "
            "could not be verified"
        )


def worker_settings(settings: Settings, index: int, ports: dict[str, int]) -> Settings:
    """Settings of worker ``index`` (1, 2, ...): the ports worker 0 bound, its own instance
    name (``<instance>-w<index>``), audit file and audit state file (``<stem>-w<index><suffix>``;
    each worker has its own chain, and its own usage cursor next to its file) and metrics
    port (``gateway_metrics_port + index``; any free port when that is 0)."""
    instance = settings.gateway_instance or socket.gethostname()
    audit, state = settings.audit_file, settings.audit_state_file
    metrics = settings.gateway_metrics_port
    return settings.model_copy(
        update={
            "gateway_http_port": ports["http"],
            "gateway_grpc_port": ports["grpc"],
            "gateway_metrics_port": metrics + index if metrics else 0,
            "gateway_instance": f"{instance}-w{index}",
            "audit_file": audit.with_name(f"{audit.stem}-w{index}{audit.suffix}"),
            # each worker's own chain links to its own last line after a restart
            "audit_state_file": (
                state.with_name(f"{state.stem}-w{index}{state.suffix}") if state else None
            ),
        }
    )


_WORKER_CODE = "from modelseal.gateway.main import worker_main; worker_main()"


class Workers:
    """Worker processes 1..N-1 (this process is worker 0): each a whole gateway on the
    same HTTP and gRPC ports (``SO_REUSEPORT``; the kernel spreads connections), sharing
    counters through Redis. A worker that exits while the gateway runs is started again.
    Settings go to a worker on its stdin (never in its environment)."""

    def __init__(self, settings: Settings, ports: dict[str, int]) -> None:
        self.settings = settings
        self.ports = ports
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.ready: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    def _spawn(self, index: int) -> None:
        config = worker_settings(self.settings, index, self.ports).model_dump_json()
        ready_r, ready_w = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(ready_w)],
            stdin=subprocess.PIPE,
            pass_fds=(ready_w,),
        )
        os.close(ready_w)
        assert proc.stdin is not None
        proc.stdin.write(config.encode())
        proc.stdin.close()
        self.procs[index] = proc
        self.ready.discard(index)
        task = asyncio.create_task(self._wait_ready(index, proc, ready_r))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("gateway worker %d started (pid %d)", index, proc.pid)

    async def _wait_ready(self, index: int, proc: subprocess.Popen[bytes], fd: int) -> None:
        """The worker writes one line to its pipe once its ports are open."""
        try:
            line = await asyncio.to_thread(os.read, fd, 64)
        finally:
            os.close(fd)
        if line.startswith(b"ready") and self.procs.get(index) is proc:
            self.ready.add(index)
            log.info("gateway worker %d ready", index)

    def not_ready(self) -> str | None:
        missing = sorted(set(self.procs) - self.ready)
        return f"gateway workers not ready: {missing}" if missing else None

    def start(self) -> None:
        for index in range(1, self.settings.gateway_workers):
            self._spawn(index)
        self._watch = asyncio.create_task(self._watch_loop(), name="gateway-workers")

    async def _watch_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            for index, proc in list(self.procs.items()):
                if proc.poll() is not None and not self._stopping:
                    log.error(
                        "gateway worker %d exited (%s): starting it again", index, proc.returncode
                    )
                    self._spawn(index)

    async def stop(self, grace_s: float = 20.0) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for index, proc in self.procs.items():
            try:
                await asyncio.to_thread(proc.wait, grace_s)
            except subprocess.TimeoutExpired:
                log.error("gateway worker %d did not stop in %gs: killed", index, grace_s)
                proc.kill()
                await asyncio.to_thread(proc.wait)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    check_workers(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    check_usage_export(settings)
    gateway = Gateway(settings)
    await gateway.start()
    shipper = usage_shipper(settings)  # follows this process's own audit file
    if shipper is not None:
        shipper.on_delivered = gateway.metrics.usage_delivered.inc
        shipper.on_failure = gateway.metrics.usage_failures.inc
        gateway.metrics.usage_backlog.set_function(shipper.backlog_bytes)
        shipper.start()
    servers = Servers(gateway)
    workers: Workers | None = None
    try:
        await servers.start()
        log.info(
            "gateway %s listening: http=%d grpc=%d metrics=%d store=%s audit=%s",
            gateway.instance,
            servers.ports["http"],
            servers.ports["grpc"],
            servers.ports["metrics"],
            gateway.store_kind,
            gateway.sink.name,
        )
        if settings.gateway_workers > 1 and _ready_fd is None:
            workers = Workers(settings, servers.ports)
            servers.not_ready = workers.not_ready
            workers.start()
        if _ready_fd is not None:  # a worker: tell worker 0 that its ports are open
            os.write(_ready_fd, b"ready\n")
            os.close(_ready_fd)
        await stop.wait()
        log.info("gateway stopping")
    finally:
        if workers is not None:
            await workers.stop()
        await servers.stop()
        await gateway.stop()
        if shipper is not None:  # after the seal: deliver what is left, for a while
            await shipper.close(settings.usage_export_drain_s)
    log.info("gateway stopped")


_ready_fd: int | None = None  # set in worker processes 1..N-1


def _run_loop(settings: Settings) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


def run(settings: Settings) -> None:
    """Entry point of the ``gateway`` role."""
    setup_logging(settings.log_level)
    check_workers(settings)
    _run_loop(settings)


def worker_main() -> None:
    """Entry point of worker processes 1..N-1 (settings as JSON on stdin)."""
    global _ready_fd
    _ready_fd = int(sys.argv[1])
    with contextlib.suppress(OSError, AttributeError):  # Linux: end with the parent
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    settings = Settings(**json.loads(sys.stdin.buffer.read()))
    if os.getppid() == 1:
        return  # the parent is already gone
    setup_logging(settings.log_level)
    _run_loop(settings)
