"""A usage receiver for tests and the demo: a real HTTP server on 127.0.0.1 that accepts
CloudEvents (JSON batch mode or one structured event), parses them with the ``cloudevents``
library and keeps what it got, de-duplicated on (source, id) as a metering product would.

``stop()`` closes the port (a receiver that is down: connections are refused) and
``start()`` opens the same port again; what was received is kept across both.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudevents.core.formats.json import JSONFormat

from modelseal_devenv.common import LOOPBACK, free_port

_FORMAT = JSONFormat()


class UsageReceiver:
    def __init__(self, port: int = 0, *, delay_s: float = 0.0) -> None:
        self.port = port or free_port()
        self.delay_s = delay_s  # wait before acknowledging a POST (a slow receiver)
        self.lock = threading.Lock()
        self.events: dict[tuple[str, str], dict[str, Any]] = {}  # (source, id) -> data
        self.received = 0  # events received, duplicates included
        self.posts = 0  # POSTs received
        self.pending = 0  # POSTs kept but not yet acknowledged
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._gate = threading.Event()
        self._gate.set()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/events"

    def start(self) -> UsageReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    receiver._take(body, self.headers.get("Content-Type") or "")
                except (ValueError, KeyError, TypeError) as exc:
                    self.send_response(400)
                    self.send_header("Content-Length", str(len(str(exc))))
                    self.end_headers()
                    self.wfile.write(str(exc).encode())
                    return
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def _take(self, body: bytes, content_type: str) -> None:
        items = json.loads(body)
        if "cloudevents-batch" not in content_type:
            items = [items]
        events = [_FORMAT.read(None, json.dumps(item)) for item in items]
        with self.lock:
            for event in events:
                data = event.get_data()
                if not isinstance(data, Mapping):
                    raise ValueError(f"event {event.get_id()}: data is not a JSON object")
                self.events[(event.get_source(), event.get_id())] = {
                    **data,
                    "type": event.get_type(),
                    "subject": event.get_subject(),
                }
                self.received += 1
            self.posts += 1
            # Kept, but not acknowledged yet: the sender may die before it hears the 2xx.
            self.pending += 1
        self._gate.wait()
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        with self.lock:
            self.pending -= 1

    def hold(self) -> None:
        """Keep what arrives but acknowledge nothing until ``release``."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def billed(self, tenant: str | None = None) -> int:
        """Requests billed after de-duplication (the sum of the unique events' counts)."""
        with self.lock:
            return sum(
                int(e.get("count", 0))
                for e in self.events.values()
                if tenant is None or e.get("tenant") == tenant
            )

    def __enter__(self) -> UsageReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
