"""The CLI never lets a bundle's (unauthenticated) key envelope choose the Vault path its
token goes to (issue 12, High 14): ``verify``, ``unseal`` and ``rewrap`` use the configured
Transit mount and refuse a bundle naming another, before any Vault call.

Vault's address here is a closed loopback port: a command that called Vault would end
with exit 3 (Vault unreachable) instead of the refusal's exit 1."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from modelseal.cli import main as cli_main
from modelseal.crypto import format as fmt
from modelseal.crypto.stream import SecretBytes
from modelseal.crypto.testing import make_bundle


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_vault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("VAULT_TOKEN", "owner-token-that-must-not-travel")
    monkeypatch.delenv("MODELSEAL_VAULT_TRANSIT_MOUNT", raising=False)


def _bundle(tmp_path: Path, mount: str) -> Path:
    env = fmt.Envelope("model-key", 1, "vault:v1:dGVzdA==", mount)
    bundle = make_bundle({"m/1/model.py": b"x" * 3000}, SecretBytes(os.urandom(32)), envelope=env)
    path = tmp_path / f"b-{mount.replace('/', '_')}.mseal"
    path.write_bytes(bundle.data)
    return path


def _run(command: str, bundle: Path, tmp_path: Path, *extra: str) -> list[str]:
    where = {
        "verify": ["--no-progress"],
        "unseal": ["--to", str(tmp_path / "out"), "--allow-non-tmpfs", "--no-progress"],
        "rewrap": [],
    }[command]
    return [command, str(bundle), *where, *extra]


@pytest.mark.parametrize("command", ["verify", "unseal", "rewrap"])
def test_a_bundle_naming_another_mount_is_refused_before_vault(
    command: str, tmp_path: Path, no_vault: None, capsys: pytest.CaptureFixture[str]
) -> None:
    stolen = _bundle(tmp_path, "secret/data/stolen")
    before = stolen.read_bytes()
    assert cli_main.main(_run(command, stolen, tmp_path)) == 1
    err = capsys.readouterr().err
    assert "names Transit mount 'secret/data/stolen'" in err and "'transit'" in err
    assert "owner-token" not in err
    assert stolen.read_bytes() == before  # rewrap wrote nothing
    assert not (tmp_path / "out").exists()
    # the configured mount (flag or the operator's variable) wins; a mismatch is refused
    assert cli_main.main(_run(command, stolen, tmp_path, "--transit-mount", "transit2")) == 1
    assert "configured mount is 'transit2'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["verify", "unseal", "rewrap"])
def test_a_matching_mount_goes_on_to_vault(
    command: str,
    tmp_path: Path,
    no_vault: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 3 (Vault unreachable): the command got past the check to its Vault call."""
    assert cli_main.main(_run(command, _bundle(tmp_path, "transit"), tmp_path)) == 3
    custom = _bundle(tmp_path, "vendors/acme-transit")
    assert cli_main.main(_run(command, custom, tmp_path)) == 1
    args = ("--transit-mount", "vendors/acme-transit")
    assert cli_main.main(_run(command, custom, tmp_path, *args)) == 3
    monkeypatch.setenv("MODELSEAL_VAULT_TRANSIT_MOUNT", "vendors/acme-transit/")
    assert cli_main.main(_run(command, custom, tmp_path)) == 3
    capsys.readouterr()
