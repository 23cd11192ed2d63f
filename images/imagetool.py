"""Small, pure helpers of images/build.sh (standard library only; runs on any Python 3.9+).

imagetool.py dpkg-status-without PKG... <status >status
    the dpkg status database without the named packages' stanzas (dpkg itself is
    removed from the image; its status file stays for image scanners)
imagetool.py sbom --python python.cdx.json --dpkg-status status --image-name NAME
                  --image-version VERSION --digest sha256:...
                  [--distro debian-12] >image.cdx.json
    one CycloneDX JSON SBOM of the image: the Python packages that cyclonedx-py found
    in the image's venv, plus the installed Debian packages, under the image itself
imagetool.py oci-digest ARCHIVE
    the manifest digest (sha256:...) and the sum of the blob sizes of an OCI archive
    (a tar with index.json), as "DIGEST SIZE"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote


def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    """Stanzas of a dpkg status file as dicts (continuation lines kept, joined by newlines)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
            continue
        if line[0] in " \t":
            if not key:
                raise ValueError(f"continuation line before any field: {line!r}")
            current[key] += "\n" + line
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"not a field: {line!r}")
        key = name.strip()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def format_dpkg_status(stanzas: Iterable[dict[str, str]]) -> str:
    return "".join(
        "".join(f"{k}: {v}\n" if v else f"{k}:\n" for k, v in s.items()) + "\n" for s in stanzas
    )


def status_without(text: str, remove: Iterable[str]) -> str:
    drop = set(remove)
    return format_dpkg_status(s for s in parse_dpkg_status(text) if s.get("Package") not in drop)


def installed_packages(stanzas: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Only packages dpkg considers installed, sorted by name."""
    out = [s for s in stanzas if s.get("Status", "").split()[-1:] == ["installed"]]
    return sorted(out, key=lambda s: s["Package"])


def deb_purl(name: str, version: str, arch: str, distro: str) -> str:
    return (
        f"pkg:deb/debian/{quote(name, safe='')}@{quote(version, safe='')}"
        f"?arch={quote(arch, safe='')}&distro={quote(distro, safe='')}"
    )


def deb_components(stanzas: Iterable[dict[str, str]], distro: str) -> list[dict[str, Any]]:
    components = []
    for s in installed_packages(stanzas):
        arch = s.get("Architecture", "all")
        purl = deb_purl(s["Package"], s["Version"], arch, distro)
        component: dict[str, Any] = {
            "type": "library" if s["Package"].startswith("lib") else "application",
            "bom-ref": purl,
            "name": s["Package"],
            "version": s["Version"],
            "purl": purl,
        }
        if s.get("Maintainer"):
            component["publisher"] = s["Maintainer"]
        source = s.get("Source", "").split(" ")[0]
        if source:
            component["properties"] = [{"name": "deb:source", "value": source}]
        components.append(component)
    return components


def merge_sbom(
    python_bom: dict[str, Any],
    dpkg_status: str,
    *,
    image_name: str,
    image_version: str,
    digest: str,
    distro: str,
) -> dict[str, Any]:
    """The image's SBOM: cyclonedx-py's document with the Debian packages added and the image
    as its subject. Deterministic: same inputs, same bytes (components sorted by bom-ref)."""
    bom: dict[str, Any] = json.loads(json.dumps(python_bom))  # a deep copy
    debs = deb_components(parse_dpkg_status(dpkg_status), distro)
    components = list(bom.get("components", [])) + debs
    components.sort(key=lambda c: str(c.get("bom-ref", c.get("name"))))
    bom["components"] = components
    repo = image_name.rsplit("/", 1)
    image_ref = f"pkg:oci/{quote(repo[-1], safe='')}@{quote(digest, safe='')}"
    if len(repo) == 2:
        image_ref += f"?repository_url={quote(image_name, safe='/')}&tag={quote(image_version)}"
    metadata = bom.setdefault("metadata", {})
    metadata["component"] = {
        "type": "container",
        "bom-ref": image_ref,
        "name": image_name,
        "version": image_version,
        "purl": image_ref,
        "hashes": [{"alg": "SHA-256", "content": digest.removeprefix("sha256:")}],
    }
    deps = [d for d in bom.get("dependencies", []) if d.get("ref") != image_ref]
    deps += [{"ref": d["bom-ref"]} for d in debs]
    deps.append({"ref": image_ref, "dependsOn": sorted(str(c["bom-ref"]) for c in components)})
    deps.sort(key=lambda d: str(d["ref"]))
    bom["dependencies"] = deps
    return bom


def oci_archive_digest(path: str) -> tuple[str, int]:
    """(manifest digest, size) of a one-image OCI archive; size: manifest + config + layers,
    the bytes a registry stores for it."""
    with tarfile.open(path) as tar:

        def blob(digest: str) -> bytes:
            algo, _, hexd = digest.partition(":")
            member = tar.extractfile(f"blobs/{algo}/{hexd}")
            if member is None:
                raise ValueError(f"{path}: no blob {digest}")
            data = member.read()
            if hashlib.new(algo, data).hexdigest() != hexd:
                raise ValueError(f"{path}: blob {digest} does not match its digest")
            return data

        index_file = tar.extractfile("index.json")
        if index_file is None:
            raise ValueError(f"{path}: no index.json")
        manifests = json.load(index_file)["manifests"]
        if len(manifests) != 1:
            raise ValueError(f"{path}: expected one manifest, found {len(manifests)}")
        digest = manifests[0]["digest"]
        manifest = json.loads(blob(digest))
        size = len(blob(digest)) + manifest["config"]["size"]
        size += sum(layer["size"] for layer in manifest["layers"])
        return digest, size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imagetool.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dpkg-status-without")
    p.add_argument("packages", nargs="+")
    p = sub.add_parser("sbom")
    p.add_argument("--python", required=True)
    p.add_argument("--dpkg-status", required=True)
    p.add_argument("--image-name", required=True)
    p.add_argument("--image-version", required=True)
    p.add_argument("--digest", required=True)
    p.add_argument("--distro", default="debian-12")
    p = sub.add_parser("oci-digest")
    p.add_argument("archive")
    args = parser.parse_args(argv)

    if args.cmd == "dpkg-status-without":
        sys.stdout.write(status_without(sys.stdin.read(), args.packages))
    elif args.cmd == "sbom":
        with open(args.python, encoding="utf-8") as f:
            python_bom = json.load(f)
        with open(args.dpkg_status, encoding="utf-8") as f:
            status = f.read()
        bom = merge_sbom(
            python_bom,
            status,
            image_name=args.image_name,
            image_version=args.image_version,
            digest=args.digest,
            distro=args.distro,
        )
        json.dump(bom, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        digest, size = oci_archive_digest(args.archive)
        print(digest, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
