"""A request admitted but never delivered to Triton (no connection could be opened) gets
its quota back, atomically, in both store modes: 502 with a clear reason, an audit record
that says so, and the next request finds the quota it did not use."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import pytest
from bench.gateway.harness import (
    GatewayProcess,
    call,
    digits_body,
    license_doc,
    write_keys,
    write_license,
)

from modelseal_devenv.common import LOOPBACK, free_port
from modelseal_devenv.redis import RedisServer
from modelseal_devenv.triton import TritonServer

pytestmark = pytest.mark.integration

KEY = "refund-key-0123456789abcdefghij"


class SwitchableProxy:
    """A TCP proxy to Triton's HTTP port that can be switched off (listener and every
    connection closed: connecting is refused) and on again on the same port."""

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("http://").partition(":")
        self.target = (host, int(port))
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def on(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((LOOPBACK, self.port))
        lst.listen(16)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def off(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_undelivered_request_is_refunded(
    tmp_path: Path, triton_server: TritonServer, store: str
) -> None:
    write_license(
        tmp_path / "license.json",
        license_doc(
            f"refund-{store}",
            ["digits"],
            quotas={"total": 2, "per_day": 2, "rate_per_second": 1, "burst": 2, "concurrent": 1},
        ),
    )
    write_keys(tmp_path / "keys.json", {"c": (f"refund-{store}", KEY)})
    proxy = SwitchableProxy(triton_server.http_url)
    proxy.on()
    with contextlib.ExitStack() as stack:
        redis_url = ""
        if store == "redis":
            redis_url = stack.enter_context(RedisServer(tmp_path / "redis")).url
        gw = GatewayProcess(
            tmp_path,
            triton_http_url=proxy.url,
            triton_grpc_url=triton_server.grpc_url,
            store=store,
            redis_url=redis_url,
        ).start()
        stack.callback(gw.stop)
        stack.callback(proxy.off)
        url = f"{gw.http_url}/v2/models/digits/infer"
        assert call(url, digits_body(), KEY)[0] == 200  # metadata now cached, 1 of 2 used
        proxy.off()
        for _ in range(3):  # never delivered: none of them uses up the last request
            status, _, body = call(url, digits_body(), KEY)
            assert status == 502, body
            assert "not counted against the quota" in json.loads(body)["error"]
        proxy.on()
        assert call(url, digits_body(), KEY)[0] == 200  # the second of two
        status, _, body = call(url, digits_body(), KEY)
        assert status == 429 and json.loads(body)["limit"] == "total"
        assert gw.metric("modelseal_gateway_quota_refunds_total") == 3
        records = gw.wait_audit(lambda lines: sum(1 for r in lines if r["type"] == "request") >= 6)
    refunded = [r for r in records if r["type"] == "request" and r["status"] == 502]
    assert len(refunded) == 3
    assert all("not counted against the quota" in r["reason"] for r in refunded)
