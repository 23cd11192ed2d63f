"""What the tests of the operator's list-and-watch (`modelseal.k8s.watch.Follower`)
share: a recorder of the events a follower hands on, and an async wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from modelseal.k8s.api import Json

#: What a follower handed on, in order: (event type, or None for a listed object; name)
Seen = list[tuple[str | None, str]]


def recorder() -> tuple[Seen, Callable[[str | None, Json], None]]:
    """A list and the `on_event` callback that appends to it."""
    seen: Seen = []

    def on_event(event_type: str | None, obj: Json) -> None:
        seen.append((event_type, str(obj["metadata"]["name"])))

    return seen, on_event


async def until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Wait (in the event loop) until `check()` is true; fail the test after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)
