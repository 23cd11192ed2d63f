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

import pytest

from modelseal.config import Settings
from modelseal.unsealer.service import Unsealer
from modelseal.unsealer.states import UnsealerState


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _published(tmp_path: Path) -> Unsealer:
    settings = Settings(
        model_dir=tmp_path,
        triton_http_url=f"http://127.0.0.1:{_closed_port()}",  # nobody answers: unload fails
        unsealer_triton_models=["identity"],
        unsealer_port=0,
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


def _state(unsealer: Unsealer) -> UnsealerState:
    return unsealer.state


def test_a_failed_wipe_is_not_reported_revoked_and_fails_liveness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiohttp.test_utils import make_mocked_request

    import modelseal.unsealer.service as service
    from modelseal.unsealer.control_api import ControlApi
    from modelseal.unsealer.errors import UnsealError

    unsealer = _published(tmp_path)

    def failing_wipe_tree(path: Path) -> None:
        raise UnsealError(f"cannot wipe {path}: injected EIO")

    with monkeypatch.context() as patched:
        patched.setattr(service, "wipe_tree", failing_wipe_tree)
        asyncio.run(unsealer.revoke("revoked by the test"))
    assert _state(unsealer) is UnsealerState.FAILED
    assert "revoked by the test" in unsealer.reason
    assert "could not be wiped" in unsealer.reason and "injected EIO" in unsealer.reason
    assert unsealer.repository.exists()
    api = ControlApi(unsealer, "127.0.0.1", 0)

    async def probe() -> tuple[int, int]:
        health = await api.h_health(make_mocked_request("GET", "/healthz"))
        ready = await api.h_ready(make_mocked_request("GET", "/readyz"))
        return health.status, ready.status

    assert asyncio.run(probe()) == (503, 503)
    # a later revocation (the restarted container's start) wipes for real
    asyncio.run(unsealer.revoke("revoked again"))
    assert _state(unsealer) is UnsealerState.REVOKED
    assert not unsealer.repository.exists()


def test_a_revoked_license_at_start_wipes_an_earlier_runs_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container restarted (the model of its earlier run still in the tmpfs) and the
    license is revoked meanwhile: nothing is unsealed and the earlier files are wiped."""
    unsealer = _published(tmp_path)
    unsealer.state = UnsealerState.STARTING
    monkeypatch.setattr(unsealer, "license_verdict", lambda now: "license revoked")
    monkeypatch.setattr(unsealer, "validate", lambda: (b"pin", None))

    async def scenario() -> int:
        task = asyncio.create_task(unsealer.main())
        for _ in range(500):
            if _state(unsealer) is UnsealerState.REVOKED:
                break
            await asyncio.sleep(0.01)
        unsealer._stop.set()
        return await task

    assert asyncio.run(scenario()) == 0
    assert _state(unsealer) is UnsealerState.REVOKED
    assert unsealer.reason == "license revoked"
    assert not unsealer.repository.exists()
