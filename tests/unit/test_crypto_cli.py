"""The `modelseal` command line without servers: modular registration, help, keygen,
inspect of a local bundle, usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelseal.cli import main as cli_main
from modelseal.crypto import format as fmt
from modelseal.crypto.stream import SecretBytes
from modelseal.crypto.testing import make_bundle, open_bytes


def test_each_command_has_its_module() -> None:
    modules = cli_main.command_modules()
    for name in ("seal", "inspect", "verify", "rewrap", "unseal", "keygen"):
        assert f"modelseal.cli.cmd_{name}" in modules
    parser = cli_main.build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"seal", "inspect", "verify", "rewrap", "unseal", "keygen"} <= set(choices)


def test_named_command_imports_only_its_module() -> None:
    code = (
        "import sys; from modelseal.cli.main import build_parser; build_parser('unseal'); "
        "print(sorted(m for m in sys.modules if m.startswith('modelseal.cli.cmd_')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['modelseal.cli.cmd_unseal']"


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("seal", "inspect", "verify", "rewrap", "unseal", "keygen"):
        with pytest.raises(SystemExit) as info:
            cli_main.main([name, "--help"])
        assert info.value.code == 0
        parser = cli_main.build_parser(name)
        sub = parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        capsys.readouterr()


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main.main(["unseal", "x"])  # --to is required
    assert info.value.code == 2


def test_keygen_and_inspect_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    assert cli_main.main(["keygen", "-o", str(key)]) == 0
    assert (tmp_path / "k.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert cli_main.main(["keygen", "-o", str(key)]) == 4  # refuses to overwrite
    capsys.readouterr()

    raw = os.urandom(32)
    bundle = make_bundle({"m/config.pbtxt": b"x" * 5000}, SecretBytes(raw))
    path = tmp_path / "b.mseal"
    path.write_bytes(bundle.data)
    assert cli_main.main(["inspect", str(path), "--json", "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["plaintext_size"] == 5000
    assert info["digest"] == str(bundle.digest)
    assert info["digest"].startswith("blake3tree:")  # the default
    assert raw.hex() not in json.dumps(info)
    assert cli_main.main(["inspect", str(path), "--digest-only"]) == 0
    assert capsys.readouterr().out.strip() == info["digest"]
    # the same bundle, pinned by its SHA-256 tree digest (either pins it)
    args = ["inspect", str(path), "--digest-only", "--digest-algorithm", "sha256tree"]
    assert cli_main.main(args) == 0
    sha_pin = capsys.readouterr().out.strip()
    assert sha_pin.startswith("sha256tree:") and sha_pin[11:] != info["digest"][11:]
    assert open_bytes(bundle.data, SecretBytes(raw), pinned=fmt.parse_digest(sha_pin))[1]

    path.write_bytes(b"not a bundle at all, just some text" * 3)
    assert cli_main.main(["inspect", str(path)]) == 1
    assert "bad magic" in capsys.readouterr().err
    assert cli_main.main(["inspect", str(tmp_path / "missing")]) == 4
