"""A lean closed-loop HTTP/1.1 load generator (keep-alive, pre-built requests).

Each of ``concurrency`` workers owns one connection and sends the same request again as
soon as the answer is in; latency is measured per request from write to last body byte.
Written on raw asyncio streams so that the generator's own cost stays small next to what
it measures (a full HTTP client library costs more per request than the gateway's
overhead we want to see).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Result:
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    warmup_count: int = 0  # answers during the warm-up (not in the figures)

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        return self.count / self.duration_s if self.duration_s else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_s:
            return float("nan")
        data = sorted(self.latencies_s)
        k = min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))
        return data[k]

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)


def build_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _worker(
    host: str, port: int, request: bytes, stop_at: float, warm_until: float, result: Result
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    perf = time.perf_counter
    lat = result.latencies_s
    statuses = result.statuses
    try:
        while True:
            t0 = perf()
            if t0 >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.index(b"\r\n", i + 2)
                length = int(lower[i + 17 : j])
            if length:
                await reader.readexactly(length)
            t1 = perf()
            if t0 >= warm_until:
                lat.append(t1 - t0)
                statuses[status] = statuses.get(status, 0) + 1
            else:
                result.warmup_count += 1
            if b"connection: close" in lower:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def run_load(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.5,
) -> Result:
    host, port, request = build_request(url, body, headers)
    start = time.perf_counter()
    warm_until = start + warmup_s
    stop_at = warm_until + duration_s
    result = Result(concurrency, duration_s)
    await asyncio.gather(
        *(_worker(host, port, request, stop_at, warm_until, result) for _ in range(concurrency))
    )
    return result
