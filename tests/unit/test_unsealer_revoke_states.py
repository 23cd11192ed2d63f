"""Revocation reports `revoked` only once the published files are gone.

A client that polls `/status` and sees `revoked` (the operator, the tests, a platform
engineer) must be able to rely on the model being wiped; while Triton unloads the model and
the files are overwritten the state is `revoking`, and readiness is already 503.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

from modelseal.config import Settings
from modelseal.unsealer.service import Unsealer, UnsealerState


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _published(tmp_path: Path) -> Unsealer:
    settings = Settings(
        model_dir=tmp_path,
        triton_http_url=f"http://127.0.0.1:{_closed_port()}",  # nobody answers: unload fails
        unsealer_triton_models=["identity"],
    )
    unsealer = Unsealer(settings)
    (unsealer.repository / "identity" / "1").mkdir(parents=True)
    (unsealer.repository / "identity" / "1" / "model.bin").write_bytes(b"weights" * 100)
    unsealer.state = UnsealerState.READY
    return unsealer


def test_state_is_revoking_until_the_files_are_wiped(tmp_path: Path) -> None:
    unsealer = _published(tmp_path)
    seen_during_wipe: list[tuple[UnsealerState, bool]] = []
    entered, release = threading.Event(), threading.Event()
    real_wipe = unsealer._wipe

    def slow_wipe() -> None:
        seen_during_wipe.append((unsealer.state, unsealer.repository.exists()))
        entered.set()
        release.wait(5)
        real_wipe()

    unsealer._wipe = slow_wipe  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.create_task(unsealer.revoke("revoked by the test"))
        assert await asyncio.to_thread(entered.wait, 5)
        assert unsealer.state is UnsealerState.REVOKING
        release.set()
        await task

    asyncio.run(scenario())
    assert seen_during_wipe == [(UnsealerState.REVOKING, True)]
    assert unsealer.state is UnsealerState.REVOKED
    assert not unsealer.repository.exists()
    assert unsealer.reason == "revoked by the test"


def test_a_second_revocation_waits_for_the_first_and_changes_nothing(tmp_path: Path) -> None:
    unsealer = _published(tmp_path)

    async def scenario() -> None:
        await asyncio.gather(unsealer.revoke("first"), unsealer.revoke("second"))

    asyncio.run(scenario())
    assert unsealer.state is UnsealerState.REVOKED
    assert unsealer.reason == "first"
    assert not unsealer.repository.exists()


def test_states_serialise_as_their_plain_names() -> None:
    import json

    assert json.dumps({"state": UnsealerState.REVOKING}) == '{"state": "revoking"}'
