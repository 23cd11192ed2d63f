"""The unseal engine on real filesystems (tmpfs at /dev/shm, the disk under tmp_path):
publish atomically, refuse non-tmpfs targets, leave zero plaintext bytes on failure, wipe
by overwriting. Keys are random here; tests/integration/ repeats this with Vault."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from tests.unit.test_unseal_limits import shm_dir

from modelseal.crypto import BundleError, DigestMismatchError
from modelseal.crypto import format as fmt
from modelseal.crypto.stream import SecretBytes
from modelseal.crypto.testing import Bundle, make_bundle
from modelseal.unsealer import engine, memfs, sink
from modelseal.unsealer.engine import (
    NotTmpfsError,
    UnsealError,
    UnsealOptions,
    clean_stale_staging,
    unseal_stream,
    wipe_tree,
)

SHM = Path("/dev/shm")
__all__ = ["shm_dir"]  # a fresh folder on tmpfs, removed afterwards

pytestmark = pytest.mark.skipif(
    not SHM.is_dir() or engine.filesystem_type(SHM) != "tmpfs", reason="needs tmpfs at /dev/shm"
)

KEY_RAW = os.urandom(32)
WRONG_PIN = fmt.BundleDigest(fmt.DEFAULT_DIGEST_ALGORITHM, bytes(32))
MARKER = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
FILES = {
    "digits/config.pbtxt": b'name: "digits"\n' + MARKER,
    "digits/1/model.py": MARKER + os.urandom(20_000) + MARKER,
    "digits/1/weights.bin": os.urandom(70_000) + MARKER,
    "digits/1/empty": b"",
}


def key() -> SecretBytes:
    return SecretBytes(KEY_RAW)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return make_bundle(FILES, key())


def unseal(data: bytes, dest: Path, **opts: object) -> engine.UnsealReport:
    return unseal_stream(io.BytesIO(data), dest, lambda env: key(), UnsealOptions(**opts))  # type: ignore[arg-type]


def assert_no_plaintext(root: Path) -> None:
    """No file under root (the tmpfs parent) holds any marker or file content."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            data = (Path(dirpath) / name).read_bytes()
            assert MARKER not in data, f"plaintext left in {dirpath}/{name}"


def test_unseal_publishes_atomically(bundle: Bundle, shm_dir: Path) -> None:
    dest = shm_dir / "repository"
    report = unseal(bundle.data, dest, pinned_digest=bundle.digest, workers=2)
    assert report.fstype == "tmpfs"
    for path, data in FILES.items():
        assert (dest / path).read_bytes() == data
    assert sorted(os.listdir(shm_dir)) == ["repository"]  # no staging left
    mode = stat.S_IMODE(os.stat(dest / "digits/1/model.py").st_mode)
    assert mode == 0o644
    assert report.result.manifest.top_level_dirs == ["digits"]


def test_many_small_files(shm_dir: Path) -> None:
    files = {f"m/1/f{i:04d}": os.urandom(i % 50) for i in range(sink._OPEN_FDS_LIMIT + 20)}
    b = make_bundle(files, key())
    unseal(b.data, shm_dir / "r")
    for path, data in files.items():
        assert (shm_dir / "r" / path).read_bytes() == data


def test_refuses_non_tmpfs(bundle: Bundle, tmp_path: Path) -> None:
    assert engine.filesystem_type(tmp_path) not in ("tmpfs", "ramfs")
    called: list[int] = []

    def unwrap(env: fmt.Envelope) -> SecretBytes:
        called.append(1)
        return key()

    with pytest.raises(NotTmpfsError, match="not tmpfs"):
        unseal_stream(io.BytesIO(bundle.data), tmp_path / "out", unwrap)
    assert not called  # refused before the key is even unwrapped
    assert os.listdir(tmp_path) == []


def test_dev_flag_allows_non_tmpfs(
    bundle: Bundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        unseal(bundle.data, tmp_path / "out", allow_non_tmpfs=True)
    assert (tmp_path / "out" / "digits/config.pbtxt").read_bytes() == FILES["digits/config.pbtxt"]
    assert "not tmpfs" in caplog.text


@pytest.mark.parametrize("where", ["first", "middle", "last", "tag"])
def test_tampered_chunk_leaves_nothing(bundle: Bundle, shm_dir: Path, where: str) -> None:
    n = bundle.header.core.chunk_count
    index = {"first": 0, "middle": n // 2, "last": n - 1, "tag": n // 2}[where]
    start, end = bundle.record_span(index)
    data = bytearray(bundle.data)
    data[end - 1 if where == "tag" else start + 7] ^= 0x04
    with pytest.raises(BundleError):
        unseal(bytes(data), shm_dir / "repository", workers=3)
    assert os.listdir(shm_dir) == []


def test_truncated_leaves_nothing(bundle: Bundle, shm_dir: Path) -> None:
    for cut in (bundle.records_offset + 10, len(bundle.data) // 2, len(bundle.data) - 5):
        with pytest.raises(BundleError):
            unseal(bundle.data[:cut], shm_dir / "repository")
        assert os.listdir(shm_dir) == []


def test_wrong_pin_wipes_decrypted_staging(bundle: Bundle, shm_dir: Path) -> None:
    with pytest.raises(DigestMismatchError):
        unseal(bundle.data, shm_dir / "repository", pinned_digest=WRONG_PIN)
    assert os.listdir(shm_dir) == []
    assert_no_plaintext(shm_dir)


def test_destination_must_not_exist(bundle: Bundle, shm_dir: Path) -> None:
    (shm_dir / "repository").mkdir()
    with pytest.raises(UnsealError, match="already exists"):
        unseal(bundle.data, shm_dir / "repository")


def test_absurd_plaintext_size_refused_before_unwrap(bundle: Bundle, shm_dir: Path) -> None:
    core = json.loads(bundle.header.core_bytes)
    core["plaintext_size"] = 1 << 40  # 1 TiB: well-formed, but no tmpfs here is that big
    core_bytes = json.dumps(core, separators=(",", ":"), sort_keys=True).encode()
    env = bundle.header.envelope.pack()
    data = fmt.Prefix(1, 0, len(core_bytes), len(env)).pack() + core_bytes + env
    called: list[int] = []

    def unwrap(e: fmt.Envelope) -> SecretBytes:
        called.append(1)
        return key()

    with pytest.raises(UnsealError, match="bytes free"):
        unseal_stream(
            io.BytesIO(data + bundle.data[bundle.records_offset :]), shm_dir / "r", unwrap
        )
    assert not called
    assert os.listdir(shm_dir) == []


def test_expected_key_name(bundle: Bundle, shm_dir: Path) -> None:
    with pytest.raises(UnsealError, match="may use only 'other-key'"):
        unseal(bundle.data, shm_dir / "r", expected_key_name="other-key")


def test_wipe_overwrites_before_unlinking(shm_dir: Path) -> None:
    tree = shm_dir / "t"
    (tree / "a/b").mkdir(parents=True)
    f = tree / "a/b/secret.bin"
    f.write_bytes(MARKER * 1000)
    (tree / "a/link").symlink_to("/etc/passwd")
    fd = os.open(f, os.O_RDONLY)
    try:
        wipe_tree(tree)
        assert not tree.exists()
        assert Path("/etc/passwd").exists()  # the symlink was removed, not followed
        leftover = os.pread(fd, len(MARKER) * 1000, 0)
        assert leftover == bytes(len(leftover))  # the inode's pages were zeroed
    finally:
        os.close(fd)


def test_clean_stale_staging(shm_dir: Path) -> None:
    stale = shm_dir / f"{memfs.STAGING_PREFIX}repository-abc"
    stale.mkdir()
    (stale / "x").write_bytes(MARKER)
    (shm_dir / "keep").mkdir()
    assert clean_stale_staging(shm_dir) == 1
    assert os.listdir(shm_dir) == ["keep"]


def test_mountinfo_parser() -> None:
    info = (
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "23 22 0:22 / /models rw,nosuid - tmpfs tmpfs rw,size=100k\n"
        "24 22 0:23 / /models/sub\\040dir rw - ext4 /dev/vdb rw\n"
    )
    assert memfs._mountinfo_fstype(Path("/models/x"), info) == "tmpfs"
    assert memfs._mountinfo_fstype(Path("/models"), info) == "tmpfs"
    assert memfs._mountinfo_fstype(Path("/models/sub dir/y"), info) == "ext4"
    assert memfs._mountinfo_fstype(Path("/modelsx"), info) == "ext4"


def test_key_never_in_errors_or_logs(
    bundle: Bundle, shm_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    forms = [KEY_RAW.hex(), KEY_RAW.hex().upper(), base64.b64encode(KEY_RAW).decode()]
    errors: list[str] = []
    data = bytearray(bundle.data)
    data[bundle.record_span(1)[0]] ^= 1
    with caplog.at_level(logging.DEBUG):
        for blob, pin in ((bytes(data), None), (bundle.data, WRONG_PIN)):
            try:
                unseal(blob, shm_dir / "r", pinned_digest=pin)
            except BundleError as exc:
                errors.append(repr(exc) + str(exc) + repr(exc.__context__))
        try:
            unseal(bundle.data, shm_dir / "r", expected_key_name="x")
        except UnsealError as exc:
            errors.append(repr(exc))
    text = "\n".join(errors) + caplog.text
    assert len(errors) == 3
    for form in forms:
        assert form not in text
    assert MARKER.decode() not in text


def test_wipe_zeroes_data_but_does_not_fill_holes(shm_dir: Path) -> None:
    f = shm_dir / "sparse.bin"
    with open(f, "wb") as out:
        out.truncate(64 << 20)
        out.seek(32 << 20)
        out.write(MARKER * 100)
    fd = os.open(f, os.O_RDONLY)
    try:
        before = os.fstat(fd).st_blocks
        memfs._zero(f, 64 << 20)
        st = os.fstat(fd)
        assert st.st_blocks <= before + 8  # the 64 MiB of holes were not filled in
        assert os.pread(fd, len(MARKER) * 100, 32 << 20) == bytes(len(MARKER) * 100)
    finally:
        os.close(fd)


# ------------------------------------------ write modes: pwrite, and decrypt into the map


BIG = {
    "llm/config.pbtxt": b'name: "llm"\n' + MARKER,
    "llm/1/model.bin": MARKER + os.urandom(200_000) + MARKER,
    "llm/1/shard.bin": os.urandom(50_000) + MARKER,
    **{f"llm/1/tok/{i:03d}.json": MARKER + os.urandom(i * 7) for i in range(30)},
}


@pytest.fixture(scope="module")
def big_bundle() -> Bundle:
    return make_bundle(BIG, key())


@pytest.mark.parametrize("mode", ["pwrite", "mmap"])
def test_write_modes_publish_the_same_tree(big_bundle: Bundle, shm_dir: Path, mode: str) -> None:
    report = unseal(
        big_bundle.data, shm_dir / "r", workers=3, write_mode=mode, pinned_digest=big_bundle.digest
    )
    assert report.write_mode == mode
    for path, data in BIG.items():
        assert (shm_dir / "r" / path).read_bytes() == data
    assert sorted(os.listdir(shm_dir)) == ["r"]


def test_auto_mode_maps_from_four_workers(big_bundle: Bundle, shm_dir: Path) -> None:
    assert unseal(big_bundle.data, shm_dir / "a", workers=2).write_mode == "pwrite"
    assert unseal(big_bundle.data, shm_dir / "b", workers=4).write_mode == "mmap"


def test_mmap_mode_decrypts_into_the_file(
    big_bundle: Bundle, shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = sink.DirectorySink.direct

    def spy(self: sink.DirectorySink, i: int, off: int, n: int) -> object:
        calls.append(n)
        return original(self, i, off, n)

    monkeypatch.setattr(sink.DirectorySink, "direct", spy)
    unseal(big_bundle.data, shm_dir / "r", workers=4, write_mode="mmap")
    chunk = big_bundle.header.core.chunk_size
    assert sum(calls) >= 200_000 - 2 * chunk  # model.bin came in through the map
    assert (shm_dir / "r/llm/1/model.bin").read_bytes() == BIG["llm/1/model.bin"]


@pytest.mark.parametrize("where", ["early", "middle", "last"])
def test_mmap_mode_tampered_chunk_leaves_nothing(
    big_bundle: Bundle, shm_dir: Path, where: str
) -> None:
    n = big_bundle.header.core.chunk_count
    index = {"early": 3, "middle": n // 2, "last": n - 1}[where]
    start, _ = big_bundle.record_span(index)
    data = bytearray(big_bundle.data)
    data[start + 100] ^= 0x10
    with pytest.raises(BundleError):
        unseal(bytes(data), shm_dir / "repository", workers=4, write_mode="mmap")
    assert os.listdir(shm_dir) == []


def test_mmap_mode_many_small_files(shm_dir: Path) -> None:
    files = {f"m/1/f{i:04d}": os.urandom(i % 9000) for i in range(sink._OPEN_FDS_LIMIT + 20)}
    b = make_bundle(files, key())
    unseal(b.data, shm_dir / "r", workers=4, write_mode="mmap")
    for path, data in files.items():
        assert (shm_dir / "r" / path).read_bytes() == data


def test_mmap_mode_wrong_pin_wipes(big_bundle: Bundle, shm_dir: Path) -> None:
    with pytest.raises(DigestMismatchError):
        unseal(big_bundle.data, shm_dir / "r", pinned_digest=WRONG_PIN, write_mode="mmap")
    assert os.listdir(shm_dir) == []
    assert_no_plaintext(shm_dir)


def test_unknown_write_mode_refused(bundle: Bundle, shm_dir: Path) -> None:
    with pytest.raises(UnsealError, match="unknown write mode"):
        unseal(bundle.data, shm_dir / "r", write_mode="splice")
    assert os.listdir(shm_dir) == []


def test_write_mode_env_override_for_benchmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sink.choose_write_mode("auto", 2) == "pwrite"
    monkeypatch.setenv("MODELSEAL_UNSEAL_WRITE_MODE", "mmap")
    assert sink.choose_write_mode("auto", 2) == "mmap"
    assert sink.choose_write_mode("pwrite", 8) == "pwrite"  # an explicit option wins
    monkeypatch.setenv("MODELSEAL_UNSEAL_WRITE_MODE", "bogus")
    with pytest.raises(UnsealError, match="unknown write mode"):
        sink.choose_write_mode("auto", 2)
