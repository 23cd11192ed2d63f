"""KServe v2 inference requests: parsing and checking them against the model's metadata.

Pure functions. The gateway checks a request *before* it counts it, so a malformed request
gets a clear 400 and costs no quota: a JSON object with a non-empty ``inputs`` list; every
input of the model given exactly once, with the model's datatype, a shape of the model's
rank whose fixed dimensions match, and as many elements (JSON ``data``, nested or flat, of
the right JSON type) or bytes (binary extension, ``parameters.binary_data_size``) as the
shape says; requested ``outputs`` that the model has; no shared-memory references.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelseal import fastjson

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
VERSION_RE = re.compile(r"^[0-9]{1,18}$")

DTYPE_SIZES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}
INT_TYPES = frozenset(t for t in DTYPE_SIZES if "INT" in t)
FLOAT_TYPES = frozenset({"FP16", "BF16", "FP32", "FP64"})


class BadRequest(ValueError):
    """The request is malformed or does not fit the model (HTTP 400 / INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMeta:
    name: str
    versions: tuple[str, ...]
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelMeta:
        def tensors(items: Any) -> tuple[TensorMeta, ...]:
            return tuple(
                TensorMeta(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
                for t in items or []
            )

        return cls(
            name=str(data["name"]),
            versions=tuple(str(v) for v in data.get("versions") or []),
            inputs=tensors(data.get("inputs")),
            outputs=tensors(data.get("outputs")),
        )

    def input(self, name: str) -> TensorMeta | None:
        for t in self.inputs:
            if t.name == name:
                return t
        return None

    @property
    def served_version(self) -> str:
        """The version an unversioned request gets (Triton's default policy: the latest)."""
        numeric = [v for v in self.versions if v.isdigit()]
        return max(numeric, key=int) if numeric else ""

    @property
    def output_types(self) -> list[tuple[str, str]]:
        return [(t.name, t.datatype) for t in self.outputs]


def check_names(model: str, version: str) -> None:
    if not MODEL_NAME_RE.match(model):
        raise BadRequest("model name is not valid")
    if version and not VERSION_RE.match(version):
        raise BadRequest("model version must be a number")


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) under the binary tensor extension."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest("Inference-Header-Content-Length is not a number") from None
    if n < 0 or n > len(body):
        raise BadRequest("Inference-Header-Content-Length is larger than the body")
    return body[:n], body[n:]


def parse_json(data: bytes) -> dict[str, Any]:
    """The request's JSON object (`fastjson`: orjson where it reads what the standard
    library reads), so that the gateway accepts exactly what it accepted before and its
    error messages stay the same."""
    try:
        obj = fastjson.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def check_unicode(data: bytes, obj: Any) -> None:
    """Refuse JSON whose strings hold a lone surrogate (``"\\ud800"`` without its pair):
    Python's parser accepts the escape, but the text is not Unicode, Triton refuses it
    (after the quota counted it) and it cannot be written as UTF-8. The escape is rare,
    so the full check runs only when the raw bytes hold one."""
    if _SURROGATE_ESCAPE.search(data) is None:
        return
    try:
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise BadRequest(
            "request JSON holds a lone surrogate escape (\\uD800-\\uDFFF without its "
            "pair): not valid Unicode"
        ) from None


def check_shape(name: str, shape: Sequence[int], expected: Sequence[int]) -> None:
    if len(shape) != len(expected):
        raise BadRequest(
            f"input {name}: shape {list(shape)} has rank {len(shape)}, "
            f"the model expects rank {len(expected)} {list(expected)}"
        )
    for got, want in zip(shape, expected, strict=True):
        if got < 0 or (want >= 0 and got != want):
            raise BadRequest(
                f"input {name}: shape {list(shape)} does not match the model's {list(expected)}"
            )


_NUMBER_KINDS = frozenset({int, float})


def _allowed_kinds(datatype: str) -> frozenset[type]:
    if datatype == "BOOL":
        return frozenset({bool})
    if datatype in INT_TYPES:
        return frozenset({int})
    if datatype in FLOAT_TYPES:
        return _NUMBER_KINDS
    return frozenset({str})  # BYTES


def _count_json(name: str, datatype: str, data: Any) -> int:
    """Elements of a (possibly nested) JSON tensor, each of the datatype's JSON type."""
    items: list[Any] = data if isinstance(data, list) else [data]
    while True:
        kinds = set(map(type, items))
        if list not in kinds:
            break
        if len(kinds) != 1:
            raise BadRequest(f"input {name}: data mixes nested lists and values")
        items = list(itertools.chain.from_iterable(items))
    if not kinds <= _allowed_kinds(datatype):
        bad = next(i for i in items if type(i) not in _allowed_kinds(datatype))
        raise BadRequest(f"input {name}: element {bad!r} is not of datatype {datatype}")
    return len(items)


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where}: parameters must be an object")
    if any(str(k).startswith("shared_memory") for k in params):
        raise BadRequest(f"{where}: shared memory is not offered by the gateway")
    return params


def check_request(
    req: dict[str, Any], meta: ModelMeta, binary_len: int
) -> list[tuple[str, int | None]] | None:
    """Check a JSON inference request; returns the requested outputs (name, classification)
    or None when the request names none."""
    if "id" in req and not isinstance(req["id"], str):
        raise BadRequest("id must be a string")
    _params(req, "request")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("inputs must be a non-empty list")
    seen: set[str] = set()
    binary_total = 0
    for inp in inputs:
        if not isinstance(inp, dict):
            raise BadRequest("each input must be an object")
        name = inp.get("name")
        if not isinstance(name, str):
            raise BadRequest("each input needs a name")
        want = meta.input(name)
        if want is None:
            raise BadRequest(f"model {meta.name} has no input {name!r}")
        if name in seen:
            raise BadRequest(f"input {name} is given twice")
        seen.add(name)
        datatype = inp.get("datatype")
        if datatype != want.datatype:
            raise BadRequest(
                f"input {name}: datatype {datatype!r}, the model expects {want.datatype}"
            )
        shape = inp.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise BadRequest(f"input {name}: shape must be a list of integers")
        check_shape(name, shape, want.shape)
        elements = math.prod(shape)
        params = _params(inp, f"input {name}")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in inp:
                raise BadRequest(f"input {name}: both data and binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"input {name}: binary_data_size must be a whole number")
            item = DTYPE_SIZES.get(datatype)
            if item is not None and size != elements * item:
                raise BadRequest(
                    f"input {name}: {size} bytes of binary data, shape {shape} of {datatype} "
                    f"needs {elements * item}"
                )
            binary_total += size
        else:
            if "data" not in inp:
                raise BadRequest(f"input {name}: no data")
            count = _count_json(name, datatype, inp["data"])
            if count != elements:
                raise BadRequest(
                    f"input {name}: {count} elements of data, shape {shape} needs {elements}"
                )
    missing = [t.name for t in meta.inputs if t.name not in seen]
    if missing:
        raise BadRequest(f"missing inputs: {missing}")
    if binary_total != binary_len:
        raise BadRequest(f"binary data is {binary_len} bytes, the inputs declare {binary_total}")
    return _requested_outputs(req.get("outputs"), meta)


def _requested_outputs(outputs: Any, meta: ModelMeta) -> list[tuple[str, int | None]] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise BadRequest("outputs must be a list")
    known = {t.name for t in meta.outputs}
    out: list[tuple[str, int | None]] = []
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each requested output must be an object with a name")
        name = item["name"]
        if name not in known:
            raise BadRequest(f"model {meta.name} has no output {name!r}")
        params = _params(item, f"output {name}")
        cls = params.get("classification")
        if cls is not None and (not isinstance(cls, int) or isinstance(cls, bool) or cls < 0):
            raise BadRequest(f"output {name}: classification must be a whole number")
        out.append((name, cls))
    return out
