"""`modelseal` against a real Vault (and a real S3 server): the round trip seal -> inspect ->
verify -> rewrap -> unseal, and every bad input of issue 3: each must give a clear message,
a non-zero exit, and zero plaintext bytes in the target filesystem. Every output of every
bad case is scanned for the data key (hex, base64) and for plaintext."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.server
import io
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelseal.cli.main import main
from modelseal.crypto import format as fmt
from modelseal.crypto.stream import SecretBytes
from modelseal.crypto.testing import raw_bundle
from modelseal.vault import transit

pytestmark = pytest.mark.integration

MARKER = b"PLAINTEXT-" + os.urandom(6).hex().encode()
SHM = Path("/dev/shm")


def build_model(root: Path) -> dict[str, bytes]:
    files = {
        "identity/config.pbtxt": b'name: "identity"\nbackend: "python"\n# ' + MARKER + b"\n",
        "identity/1/model.py": b"# " + MARKER + b"\n" + os.urandom(3000),
        "identity/1/weights.bin": os.urandom(700_000) + MARKER,
        "identity/1/empty.txt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.chmod(root / "identity/1/model.py", 0o755)  # noqa: S103 - an executable model file
    return files


class Run:
    """Runs the CLI in-process; records every output for the leak scan."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.transcript: list[str] = []

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        self.transcript += [out, err]
        return code, out, err


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], vault_server: Any, monkeypatch: pytest.MonkeyPatch
) -> Run:
    monkeypatch.setenv("VAULT_ADDR", vault_server.addr)
    monkeypatch.setenv("VAULT_TOKEN", vault_server.root_token)
    monkeypatch.delenv("VAULT_TOKEN_FILE", raising=False)
    monkeypatch.delenv("VAULT_K8S_ROLE", raising=False)
    return Run(capsys)


@pytest.fixture
def target(tmpfs_path: Path) -> Path:
    """Parent folder on tmpfs; tests unseal into target/'repo'."""
    return tmpfs_path


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "model"
    return root, build_model(root)


@pytest.fixture
def sealed(
    cli: Run, model: tuple[Path, dict[str, bytes]], transit_key: str, tmp_path: Path
) -> dict[str, Any]:
    root, files = model
    out = tmp_path / "model.mseal"
    code, stdout, err = cli(
        "seal",
        str(root),
        "-o",
        str(out),
        "--transit-key",
        transit_key,
        "--chunk-size",
        "65536",
        "--json",
        "--no-progress",
    )
    assert code == 0, err
    info = json.loads(stdout)
    return {"path": out, "digest": info["digest"], "files": files, "key": transit_key, **info}


def data_key_forms(vault_server: Any, bundle: Path) -> list[str]:
    with open(bundle, "rb") as f:
        env = fmt.read_header(f).envelope
    key = transit.unwrap_data_key(vault_server.client(), env.key_name, env.wrapped_key)
    raw = key.reveal()
    return [
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        repr(raw)[2:-1],
    ]


def assert_clean(target: Path) -> None:
    """Nothing under the tmpfs target: no staging folder, no file, no plaintext."""
    leftovers = list(target.rglob("*"))
    assert leftovers == [], leftovers


def assert_no_leak(texts: list[str], forms: list[str]) -> None:
    blob = "\n".join(texts)
    for form in forms:
        assert form not in blob
    assert MARKER.decode() not in blob


# ------------------------------------------------------------------------ round trip


def test_round_trip_seal_inspect_verify_rewrap_unseal(
    cli: Run,
    vault_server: Any,
    model: tuple[Path, dict[str, bytes]],
    transit_key: str,
    tmp_path: Path,
    target: Path,
) -> None:
    root, files = model
    sign_key = tmp_path / "publisher.key"
    code, out, err = cli("keygen", "-o", str(sign_key))
    assert code == 0, err
    assert stat.S_IMODE(sign_key.stat().st_mode) == 0o600
    pub = Path(str(sign_key) + ".pub")
    bundle = tmp_path / "m.mseal"

    code, out, err = cli(
        "seal",
        str(root),
        "-o",
        str(bundle),
        "--transit-key",
        transit_key,
        "--sign-key",
        str(sign_key),
        "--chunk-size",
        "65536",
        "--json",
        "--no-progress",
    )
    assert code == 0, err
    sealed = json.loads(out)
    assert sealed["plaintext_size"] == sum(len(v) for v in files.values())
    assert sealed["file_count"] == len(files)
    assert sealed["key_version"] == 1
    digest = sealed["digest"]
    assert re.fullmatch(r"blake3tree:[0-9a-f]{64}", digest)  # the default
    assert MARKER not in bundle.read_bytes()  # the plaintext is not in the bundle

    code, out, err = cli("inspect", str(bundle), "--json", "--no-progress")
    assert code == 0, err
    info = json.loads(out)
    assert info["digest"] == digest
    assert info["transit_key"] == transit_key
    assert info["key_version"] == 1
    assert info["plaintext_size"] == sealed["plaintext_size"]
    assert info["signatures"] and info["signatures"][0]["alg"] == "ed25519"
    assert "plaintext" not in out.lower().replace("plaintext_size", "")

    code, out, err = cli(
        "verify", str(bundle), "--digest", digest, "--trust-key", str(pub), "--no-progress"
    )
    assert code == 0, err
    assert out.startswith("ok:")
    # its SHA-256 tree digest pins it too; the signature covers the BLAKE3 one, and says so
    code, out, err = cli(
        "inspect", "--digest-only", "--digest-algorithm", "sha256tree", str(bundle), "--no-progress"
    )
    assert code == 0, err
    sha_pin = out.strip()
    assert re.fullmatch(r"sha256tree:[0-9a-f]{64}", sha_pin)
    code, out, err = cli("verify", str(bundle), "--digest", sha_pin, "--no-progress")
    assert code == 0 and sha_pin in out, err
    code, out, err = cli(
        "verify", str(bundle), "--digest", sha_pin, "--trust-key", str(pub), "--no-progress"
    )
    assert code != 0 and "signatures cover its blake3tree digest" in err, err

    # rotate the Transit key, rewrap, then forbid the old version
    admin = vault_server.client()
    admin.secrets.transit.rotate_key(name=transit_key)
    old_copy = tmp_path / "old.mseal"
    shutil.copy(bundle, old_copy)
    body_before = bundle.read_bytes()
    code, out, err = cli("rewrap", str(bundle), "--json")
    assert code == 0, err
    rewrap = json.loads(out)
    assert (rewrap["old_version"], rewrap["new_version"], rewrap["changed"]) == (1, 2, True)
    with open(bundle, "rb") as f:
        h = fmt.read_header(f)
    assert h.envelope.key_version == 2
    # bulk data byte-identical
    old_h = fmt.read_header(io.BytesIO(body_before))
    assert bundle.read_bytes()[h.records_offset :] == body_before[old_h.records_offset :]
    code, out, err = cli("inspect", "--digest-only", str(bundle), "--no-progress")
    assert out.strip() == digest  # the pin survives rewrap
    code, out, err = cli("rewrap", str(bundle))
    assert code == 0 and "nothing to do" in out

    admin.secrets.transit.update_key_configuration(name=transit_key, min_decryption_version=2)
    dest = target / "repo"
    code, out, err = cli(
        "unseal", str(old_copy), "--to", str(dest), "--digest", digest, "--no-progress"
    )
    assert code == 3, err
    assert "min_decryption_version" in err
    assert_clean(target)

    code, out, err = cli(
        "unseal",
        str(bundle),
        "--to",
        str(dest),
        "--digest",
        digest,
        "--trust-key",
        str(pub),
        "--json",
        "--no-progress",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["filesystem"] == "tmpfs"
    assert result["signer"]
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert stat.S_IMODE((dest / "identity/1/model.py").stat().st_mode) == 0o755
    assert sorted(os.listdir(target)) == ["repo"]
    assert_no_leak(cli.transcript, data_key_forms(vault_server, bundle))


def test_seal_refuses_symlinks_and_existing_output(
    cli: Run, model: tuple[Path, dict[str, bytes]], transit_key: str, tmp_path: Path
) -> None:
    root, _ = model
    out = tmp_path / "x.mseal"
    (root / "identity/1/link").symlink_to("/etc/passwd")
    code, _, err = cli("seal", str(root), "-o", str(out), "--transit-key", transit_key)
    assert code == 1
    assert "symlink" in err
    assert not out.exists()
    (root / "identity/1/link").unlink()
    out.write_bytes(b"x")
    code, _, err = cli("seal", str(root), "-o", str(out), "--transit-key", transit_key)
    assert code == 4 and "exists" in err


def test_seal_with_missing_transit_key(
    cli: Run, model: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, _ = model
    code, _, err = cli("seal", str(root), "-o", str(tmp_path / "o"), "--transit-key", "nope")
    assert code == 3
    assert "Transit datakey" in err
    assert not list(tmp_path.glob(".o.tmp*"))


# ------------------------------------------------------------------------ bad inputs


def records(b: bytes) -> tuple[fmt.BundleHeader, list[bytes], bytes]:
    h = fmt.read_header(io.BytesIO(b))
    core = h.core
    recs: list[bytes] = []
    pos = h.records_offset
    for i in range(core.chunk_count):
        n = core.chunk_plain_len(i) + fmt.TAG_SIZE
        recs.append(b[pos : pos + n])
        pos += n
    return h, recs, b[pos:]


def rebuild(b: bytes, recs: list[bytes]) -> bytes:
    h, _, tail = records(b)
    return b[: h.records_offset] + b"".join(recs) + tail


def flip(b: bytes, pos: int) -> bytes:
    data = bytearray(b)
    data[pos] ^= 0x10
    return bytes(data)


def _truncated(b: bytes, ctx: dict[str, Any]) -> bytes:
    return b[: len(b) // 2]


def _missing_last(b: bytes, ctx: dict[str, Any]) -> bytes:
    _, recs, _ = records(b)
    return rebuild(b, recs[:-1])


def _swapped(b: bytes, ctx: dict[str, Any]) -> bytes:
    _, recs, _ = records(b)
    recs[2], recs[3] = recs[3], recs[2]
    return rebuild(b, recs)


def _spliced(b: bytes, ctx: dict[str, Any]) -> bytes:
    _, recs, _ = records(b)
    _, other, _ = records(ctx["other"])
    recs[2] = other[2]
    return rebuild(b, recs)


def _flip_header(b: bytes, ctx: dict[str, Any]) -> bytes:
    h, _, _ = records(b)
    core = h.core_bytes
    pos = fmt.PREFIX_SIZE + core.index(b'"nonce_prefix":"') + len(b'"nonce_prefix":"') + 1
    data = bytearray(b)
    data[pos] = ord("0") if data[pos] != ord("0") else ord("1")  # still hex: parses, then
    return bytes(data)  # fails authentication


def _flip_chunk(b: bytes, ctx: dict[str, Any]) -> bytes:
    h, _, _ = records(b)
    return flip(b, h.records_offset + 3 * 65552 + 100)


def _flip_tag(b: bytes, ctx: dict[str, Any]) -> bytes:
    h, _, _ = records(b)
    return flip(b, h.records_offset + 65552 - 3)


def _absurd_size(b: bytes, ctx: dict[str, Any]) -> bytes:
    h, _, _ = records(b)
    core = json.loads(h.core_bytes)
    core["plaintext_size"] = 1 << 40
    cb = json.dumps(core, separators=(",", ":"), sort_keys=True).encode()
    env = h.envelope.pack()
    return fmt.Prefix(1, 0, len(cb), len(env)).pack() + cb + env + b[h.records_offset :]


def _absurd_chunk(b: bytes, ctx: dict[str, Any]) -> bytes:
    h, _, _ = records(b)
    core = json.loads(h.core_bytes)
    core["chunk_size"] = 1 << 40
    cb = json.dumps(core, separators=(",", ":"), sort_keys=True).encode()
    env = h.envelope.pack()
    return fmt.Prefix(1, 0, len(cb), len(env)).pack() + cb + env + b[h.records_offset :]


def _hostile_manifest(entry: dict[str, Any]) -> Callable[[bytes, dict[str, Any]], bytes]:
    def make(b: bytes, ctx: dict[str, Any]) -> bytes:
        manifest = json.dumps({"salt": "00" * 16, "entries": [entry]}).encode()
        key: SecretBytes = ctx["data_key"]
        return raw_bundle(
            manifest, b"x" + MARKER, key, chunk_size=4096, file_count=1, envelope=ctx["envelope"]
        ).data

    return make


BAD = {
    "truncated": (_truncated, [], 1, r"truncated"),
    "missing-last-chunk": (_missing_last, [], 1, r"failed authentication|trailer|truncated"),
    "chunks-swapped": (_swapped, [], 1, r"failed authentication"),
    "chunk-spliced": (_spliced, [], 1, r"failed authentication"),
    "header-bit-flip": (_flip_header, [], 1, r"failed authentication"),
    "chunk-bit-flip": (_flip_chunk, [], 1, r"chunk 3 of \d+ failed authentication"),
    "tag-bit-flip": (_flip_tag, [], 1, r"chunk 0 of \d+ failed authentication"),
    "wrong-pin": (None, ["--digest", "sha256tree:" + "ab" * 32], 1, r"pinned digest"),
    "absurd-size": (_absurd_size, [], 4, r"bytes free"),
    "absurd-chunk-size": (_absurd_chunk, [], 1, r"chunk_size"),
    "manifest-dotdot": (
        _hostile_manifest(
            {"path": "../../etc/evil", "type": "file", "mode": 420, "size": 1 + len(MARKER)}
        ),
        [],
        1,
        r"path traversal",
    ),
    "manifest-absolute": (
        _hostile_manifest(
            {"path": "/etc/evil", "type": "file", "mode": 420, "size": 1 + len(MARKER)}
        ),
        [],
        1,
        r"absolute",
    ),
    "manifest-symlink": (
        _hostile_manifest({"path": "identity/link", "type": "symlink", "mode": 511}),
        [],
        1,
        r"symlink",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_bundle_refused(
    case: str,
    cli: Run,
    sealed: dict[str, Any],
    vault_server: Any,
    model: Any,
    tmp_path: Path,
    target: Path,
) -> None:
    make, extra, code_expected, pattern = BAD[case]
    good = sealed["path"].read_bytes()
    with open(sealed["path"], "rb") as f:
        envelope = fmt.read_header(f).envelope
    ctx: dict[str, Any] = {
        "envelope": envelope,
        "data_key": transit.unwrap_data_key(
            vault_server.client(), envelope.key_name, envelope.wrapped_key
        ),
    }
    if case == "chunk-spliced":
        other = tmp_path / "other.mseal"
        code, _, err = cli(
            "seal",
            str(model[0]),
            "-o",
            str(other),
            "--transit-key",
            sealed["key"],
            "--chunk-size",
            "65536",
            "--no-progress",
        )
        assert code == 0, err
        ctx["other"] = other.read_bytes()
    bad = tmp_path / "bad.mseal"
    bad.write_bytes(make(good, ctx) if make else good)
    pin = [] if "--digest" in extra else ["--digest", sealed["digest"]]
    if case.startswith("manifest"):
        pin = []  # a hostile bundle is not the pinned one; show the manifest check itself
    code, _out, err = cli(
        "unseal", str(bad), "--to", str(target / "repo"), "--no-progress", *pin, *extra
    )
    assert code == code_expected, err
    assert re.search(pattern, err), err
    assert err.startswith("modelseal unseal: error: ")
    assert_clean(target)
    assert not Path("/etc/evil").exists()
    # verify gives the same verdict and writes nothing either
    if code_expected == 1 and not case.startswith("absurd"):
        code, _, err = cli("verify", str(bad), "--no-progress", *pin, *extra)
        assert code == 1, err
    assert_no_leak(cli.transcript, data_key_forms(vault_server, sealed["path"]))


def test_wrong_transit_key(
    cli: Run, sealed: dict[str, Any], vault_server: Any, target: Path
) -> None:
    other = vault_server.create_transit_key()
    code, _, err = cli(
        "unseal",
        str(sealed["path"]),
        "--to",
        str(target / "repo"),
        "--transit-key",
        other,
        "--digest",
        sealed["digest"],
    )
    assert code == 3
    assert "not wrapped by this Transit key" in err
    assert_clean(target)


def test_bad_signature(
    cli: Run, sealed: dict[str, Any], tmp_path: Path, target: Path, model: Any
) -> None:
    mine, other = tmp_path / "mine.key", tmp_path / "other.key"
    assert cli("keygen", "-o", str(mine))[0] == 0
    assert cli("keygen", "-o", str(other))[0] == 0
    # unsigned bundle, signature required
    code, _, err = cli(
        "unseal", str(sealed["path"]), "--to", str(target / "repo"), "--trust-key", f"{mine}.pub"
    )
    assert code == 1 and "not signed" in err
    # signed by an untrusted key
    signed = tmp_path / "signed.mseal"
    assert (
        cli(
            "seal",
            str(model[0]),
            "-o",
            str(signed),
            "--transit-key",
            sealed["key"],
            "--sign-key",
            str(other),
            "--no-progress",
        )[0]
        == 0
    )
    code, _, err = cli(
        "unseal", str(signed), "--to", str(target / "repo"), "--trust-key", f"{mine}.pub"
    )
    assert code == 1 and "no signature by a trusted key" in err
    # a signature whose bytes were altered
    data = bytearray(signed.read_bytes())
    h, _, tail = records(bytes(data))
    trailer = fmt.parse_trailer_body(tail[fmt.TRAILER_HEAD_SIZE :])
    sig = trailer.signatures[0]
    forged = fmt.Trailer((dataclasses.replace(sig, signature=bytes(64)),))
    signed.write_bytes(bytes(data[: h.trailer_offset]) + forged.pack())
    code, _, err = cli(
        "unseal", str(signed), "--to", str(target / "repo"), "--trust-key", f"{other}.pub"
    )
    assert code == 1 and "does not verify" in err
    assert_clean(target)


def test_non_tmpfs_target_refused(cli: Run, sealed: dict[str, Any], tmp_path: Path) -> None:
    dest = tmp_path / "disk-target"
    code, _, err = cli(
        "unseal", str(sealed["path"]), "--to", str(dest), "--digest", sealed["digest"]
    )
    assert code == 4
    assert "not tmpfs" in err
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".modelseal-staging")]


def test_vault_unreachable(
    cli: Run, sealed: dict[str, Any], target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")
    started = time.monotonic()
    code, _, err = cli("unseal", str(sealed["path"]), "--to", str(target / "repo"))
    assert code == 3
    assert "cannot reach Vault at http://127.0.0.1:9" in err
    assert time.monotonic() - started < 30
    assert_clean(target)


def test_vault_token_refused(
    cli: Run, sealed: dict[str, Any], target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "hvs.not-a-token")
    code, _, err = cli("verify", str(sealed["path"]))
    assert code == 3
    assert "hvs.not-a-token" not in err


class _Stall(http.server.BaseHTTPRequestHandler):
    payload = b""

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2])
        self.wfile.flush()
        time.sleep(10)


@contextlib.contextmanager
def stalling_server(payload: bytes) -> Iterator[str]:
    handler = type("H", (_Stall,), {"payload": payload})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model.mseal"
    finally:
        server.shutdown()
        server.server_close()


def test_stalled_source(cli: Run, sealed: dict[str, Any], target: Path) -> None:
    with stalling_server(sealed["path"].read_bytes()) as url:
        started = time.monotonic()
        code, _, err = cli(
            "unseal",
            url,
            "--to",
            str(target / "repo"),
            "--allow-http",
            "--source-timeout",
            "1",
            "--digest",
            sealed["digest"],
        )
        assert time.monotonic() - started < 8  # the server stalls 10 s: we gave up first
    assert code == 4
    assert "stalled" in err
    assert_clean(target)


def test_unseal_from_s3(
    cli: Run,
    sealed: dict[str, Any],
    s3_server: Any,
    s3_bucket: str,
    target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    s3_server.client().put_object(
        Bucket=s3_bucket, Key="models/identity.mseal", Body=sealed["path"].read_bytes()
    )
    dest = target / "repo"
    code, _out, err = cli(
        "unseal",
        f"s3://{s3_bucket}/models/identity.mseal",
        "--to",
        str(dest),
        "--digest",
        sealed["digest"],
        "--no-progress",
    )
    assert code == 0, err
    for rel, data in sealed["files"].items():
        assert (dest / rel).read_bytes() == data
    code, _, err = cli("inspect", f"s3://{s3_bucket}/models/identity.mseal", "--digest-only")
    assert code == 0
    code, _, err = cli("unseal", f"s3://{s3_bucket}/missing.mseal", "--to", str(target / "repo2"))
    assert code == 4
    assert "NoSuchKey" in err
    assert not (target / "repo2").exists()


@pytest.mark.parametrize("case", ["truncated", "chunk-bit-flip", "chunks-swapped"])
def test_bad_bundle_from_s3_refused(
    case: str,
    cli: Run,
    sealed: dict[str, Any],
    s3_server: Any,
    s3_bucket: str,
    target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    make, _, code_expected, pattern = BAD[case]
    assert make is not None
    bad = make(sealed["path"].read_bytes(), {})
    s3_server.client().put_object(Bucket=s3_bucket, Key="bad.mseal", Body=bad)
    code, _, err = cli(
        "unseal",
        f"s3://{s3_bucket}/bad.mseal",
        "--to",
        str(target / "repo"),
        "--digest",
        sealed["digest"],
        "--no-progress",
    )
    assert code == code_expected, err
    assert re.search(pattern, err), err
    assert_clean(target)
