"""The pure parts of the image build (images/imagetool.py) and the scripts' syntax. The build
itself (`make images`, minutes, root, mmdebstrap and buildah) is not part of `make test`."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("imagetool", ROOT / "images" / "imagetool.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["imagetool"] = module
    spec.loader.exec_module(module)
    return module


imagetool = _load()

STATUS = """\
Package: dpkg
Essential: yes
Status: install ok installed
Priority: required
Architecture: amd64
Version: 1.21.22
Description: Debian package management system
 This package provides the low-level infrastructure for handling the
 installation and removal of Debian software packages.

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u10
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Description: GNU C Library: Shared libraries

Package: python3.11-minimal
Status: install ok installed
Architecture: amd64
Source: python3.11 (3.11.2-6)
Version: 3.11.2-6+deb12u6
Conffiles:
 /etc/python3.11/sitecustomize.py 0123
Description: Minimal subset of the Python language (version 3.11)

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1:2.0+b1
Description: removed, its configuration kept
"""


def test_status_roundtrip_keeps_continuation_lines() -> None:
    stanzas = imagetool.parse_dpkg_status(STATUS)
    assert [s["Package"] for s in stanzas] == ["dpkg", "libc6", "python3.11-minimal", "gone"]
    assert stanzas[0]["Description"].endswith("Debian software packages.")
    assert imagetool.parse_dpkg_status(imagetool.format_dpkg_status(stanzas)) == stanzas


def test_status_without_drops_only_the_named_packages() -> None:
    out = imagetool.status_without(STATUS, ["dpkg"])
    names = [s["Package"] for s in imagetool.parse_dpkg_status(out)]
    assert names == ["libc6", "python3.11-minimal", "gone"]
    assert "Package: dpkg\n" not in out
    assert " /etc/python3.11/sitecustomize.py 0123\n" in out


def test_status_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        imagetool.parse_dpkg_status(" continuation first\n")
    with pytest.raises(ValueError):
        imagetool.parse_dpkg_status("Package: a\nno colon here\n")


def test_deb_purl_escapes_epoch_and_plus() -> None:
    assert (
        imagetool.deb_purl("gone", "1:2.0+b1", "amd64", "debian-12")
        == "pkg:deb/debian/gone@1%3A2.0%2Bb1?arch=amd64&distro=debian-12"
    )


PY_BOM: dict[str, Any] = {
    "bomFormat": "CycloneDX",
    "specVersion": "1.6",
    "version": 1,
    "metadata": {"tools": {"components": [{"name": "cyclonedx-py"}]}},
    "components": [
        {"bom-ref": "pyyaml==6.0.3", "name": "PyYAML", "version": "6.0.3", "type": "library"},
        {"bom-ref": "kopf==1.45.2", "name": "kopf", "version": "1.45.2", "type": "library"},
    ],
    "dependencies": [
        {"ref": "kopf==1.45.2", "dependsOn": ["pyyaml==6.0.3"]},
        {"ref": "pyyaml==6.0.3"},
    ],
}


def _merge() -> dict[str, Any]:
    result: dict[str, Any] = imagetool.merge_sbom(
        PY_BOM,
        imagetool.status_without(STATUS, ["dpkg"]),
        image_name="ghcr.io/modelseal/modelseal",
        image_version="0.1.0",
        digest="sha256:" + "ab" * 32,
        distro="debian-12",
    )
    return result


def test_sbom_has_python_and_installed_debian_packages_under_the_image() -> None:
    bom = _merge()
    names = sorted(c["name"] for c in bom["components"])
    assert names == ["PyYAML", "kopf", "libc6", "python3.11-minimal"]  # not "gone", not dpkg
    libc = next(c for c in bom["components"] if c["name"] == "libc6")
    assert libc["purl"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12"
    assert libc["properties"] == [{"name": "deb:source", "value": "glibc"}]
    image = bom["metadata"]["component"]
    assert image["type"] == "container"
    assert image["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert image["purl"].startswith("pkg:oci/modelseal@sha256%3Aabab")
    assert "repository_url=ghcr.io/modelseal/modelseal&tag=0.1.0" in image["purl"]
    top = next(d for d in bom["dependencies"] if d["ref"] == image["bom-ref"])
    assert sorted(top["dependsOn"]) == sorted(c["bom-ref"] for c in bom["components"])
    kopf = next(d for d in bom["dependencies"] if d["ref"] == "kopf==1.45.2")
    assert kopf["dependsOn"] == ["pyyaml==6.0.3"]
    assert PY_BOM["components"][0]["name"] == "PyYAML"  # the input is left alone
    assert "component" not in PY_BOM["metadata"]


def test_sbom_is_deterministic() -> None:
    assert json.dumps(_merge()) == json.dumps(_merge())


def _blob(tar: tarfile.TarFile, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _archive(path: Path, *, corrupt: bool = False) -> str:
    with tarfile.open(path, "w") as tar:
        layer = _blob(tar, b"layer bytes")
        config = _blob(tar, b'{"architecture":"amd64"}')
        manifest = json.dumps({"schemaVersion": 2, "config": config, "layers": [layer]}).encode()
        ref = _blob(tar, manifest)
        index = json.dumps({"schemaVersion": 2, "manifests": [ref]}).encode()
        if corrupt:
            index = index.replace(ref["digest"][-4:].encode(), b"0000")
        info = tarfile.TarInfo("index.json")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
    return str(ref["digest"])


def test_oci_digest_is_the_manifest_digest(tmp_path: Path) -> None:
    digest = _archive(tmp_path / "a.tar")
    got, size = imagetool.oci_archive_digest(str(tmp_path / "a.tar"))
    assert got == digest
    with tarfile.open(tmp_path / "a.tar") as tar:
        member = tar.extractfile(f"blobs/sha256/{digest[7:]}")
        assert member is not None
        manifest_size = len(member.read())
    assert size == manifest_size + len(b'{"architecture":"amd64"}') + len(b"layer bytes")


def test_oci_digest_refuses_a_missing_or_wrong_blob(tmp_path: Path) -> None:
    _archive(tmp_path / "b.tar", corrupt=True)
    with pytest.raises((KeyError, ValueError)):
        imagetool.oci_archive_digest(str(tmp_path / "b.tar"))


@pytest.mark.parametrize(
    "script", ["images/build.sh", "images/customize-rootfs.sh", "devenv/install-image-deps.sh"]
)
def test_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
