"""One polling helper for the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    check: Callable[[], Any],
    what: str,
    timeout: float = 60.0,
    interval: float = 0.5,
    tolerate: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll `check` until it returns something truthy and return that; exceptions of the
    `tolerate` types count as "not yet". On time-out, fail naming `what` and the last answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except tolerate as exc:
            last = exc
        if last and not isinstance(last, BaseException):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
