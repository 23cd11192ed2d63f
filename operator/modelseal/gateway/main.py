"""Running the gateway: ``run(settings)`` serves until SIGTERM/SIGINT, then drains.

Ports (all from settings, 0 = any free port): ``gateway_http_port`` (KServe v2 HTTP,
default 8000), ``gateway_grpc_port`` (KServe v2 gRPC, default 8001),
``gateway_metrics_port`` (default 8002: ``/metrics``, ``/healthz`` (process up),
``/readyz`` (license and keys loaded, Triton ready)). Logs are JSON lines on stderr;
stdout carries only audit records when ``audit_sink=stdout``.

Shutdown: stop accepting, let in-flight requests finish (up to 10 s), give back
concurrency slots, write a final signed audit checkpoint, flush the counter store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import Any

import grpc  # type: ignore[import-untyped]
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelseal.config import Settings
from modelseal.gateway.core import Gateway
from modelseal.gateway.grpc_front import GrpcFront
from modelseal.gateway.http_front import HttpFront, access_logger_class

log = logging.getLogger("modelseal.gateway")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Servers:
    """The three listeners of one gateway; ``ports`` holds the bound port numbers."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []
        self._grpc: Any = None

    async def start(self) -> None:
        s = self.gw.settings
        runner = web.AppRunner(
            HttpFront(self.gw).app(),
            handle_signals=False,
            access_log_class=access_logger_class(self.gw),
            access_log=logging.getLogger("modelseal.gateway.access"),
            keepalive_timeout=s.gateway_idle_timeout_s,
            shutdown_timeout=10.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, s.gateway_host, s.gateway_http_port, backlog=2048)
        await site.start()
        self._runners.append(runner)
        self.ports["http"] = _bound_port(runner)

        metrics = web.Application()
        metrics.router.add_get("/metrics", self._metrics)
        metrics.router.add_get("/healthz", self._healthz)
        metrics.router.add_get("/readyz", self._readyz)
        mrunner = web.AppRunner(metrics, handle_signals=False, access_log=None)
        await mrunner.setup()
        await web.TCPSite(mrunner, s.gateway_host, s.gateway_metrics_port).start()
        self._runners.append(mrunner)
        self.ports["metrics"] = _bound_port(mrunner)

        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_request_bytes),
                ("grpc.max_send_message_length", max(s.max_request_bytes, 64 * 1024 * 1024)),
                ("grpc.so_reuseport", 0),
            ]
        )
        self._grpc.add_generic_rpc_handlers((GrpcFront(self.gw).handler(),))
        self.ports["grpc"] = self._grpc.add_insecure_port(f"{s.gateway_host}:{s.gateway_grpc_port}")
        await self._grpc.start()

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=5.0)
        for runner in self._runners:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        self.gw.metrics.audit_depth.set(self.gw.audit.depth)
        return web.Response(
            body=generate_latest(self.gw.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = [f.error for f in (self.gw.licenses_file, self.gw.keys_file) if f.error]
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


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(settings)
    await gateway.start()
    servers = Servers(gateway)
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
        await stop.wait()
        log.info("gateway stopping")
    finally:
        await servers.stop()
        await gateway.stop()
    log.info("gateway stopped")


def run(settings: Settings) -> None:
    """Entry point of the ``gateway`` role."""
    setup_logging(settings.log_level)
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
