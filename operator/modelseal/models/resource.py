"""What the ProtectedModel and ModelLicense parsers share. Pure: no I/O.

The API group and kinds, `SpecError`, small field readers whose messages name the field,
RFC 3339 times, object metadata, and the output policy (a model's ``spec.outputPolicy``
and a license's ceiling ``spec.outputPolicy.maxMode``). `modelseal.models.spec` parses
ProtectedModel, `modelseal.models.license_spec` parses ModelLicense.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

GROUP = "modelseal.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MODEL_KIND = "ProtectedModel"
MODEL_PLURAL = "protectedmodels"
LICENSE_KIND = "ModelLicense"
LICENSE_PLURAL = "modellicenses"

OutputMode = Literal["full", "topK", "labels"]
OUTPUT_MODES: tuple[OutputMode, ...] = ("labels", "topK", "full")  # least to most revealing

DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SpecError(ValueError):
    """A custom resource the operator cannot act on; the message names the field."""


# --- small readers with useful messages ---------------------------------------------------


def as_object(data: Any, where: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{where} must be an object")
    return data


def req_str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None or value == "":
        raise SpecError(f"{where}.{key} is required")
    if not isinstance(value, str):
        raise SpecError(f"{where}.{key} must be a string")
    return value


def opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SpecError(f"{where}.{key} must be a string")
    return value


def int_field(
    data: Mapping[str, Any], key: str, where: str, default: int | None, lo: int, hi: int
) -> int | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}.{key} must be a whole number")
    if not lo <= value <= hi:
        raise SpecError(f"{where}.{key} must be between {lo} and {hi} (got {value})")
    return value


def number_field(data: Mapping[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}.{key} must be a number")
    if value <= 0:
        raise SpecError(f"{where}.{key} must be more than zero (got {value})")
    return float(value)


def must_match(value: str, pattern: re.Pattern[str], what: str) -> str:
    # fullmatch: a pattern's "$" also matches before a final newline
    if not pattern.fullmatch(value):
        raise SpecError(what)
    return value


def parse_time(value: Any, where: str) -> datetime | None:
    """An RFC 3339 timestamp (with a zone) as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise SpecError(
                f"{where} must be an RFC 3339 time such as 2030-01-31T00:00:00Z"
            ) from None
    else:
        raise SpecError(f"{where} must be an RFC 3339 time string")
    if parsed.tzinfo is None:
        raise SpecError(f"{where} needs a time zone (for example a trailing Z)")
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class ObjectMeta:
    """The identity of a custom resource, readable even when its spec is not."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: datetime | None
    deleting: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_meta(body: Mapping[str, Any]) -> ObjectMeta:
    meta = as_object(body.get("metadata"), "metadata")
    created: datetime | None
    try:
        created = parse_time(meta.get("creationTimestamp"), "metadata.creationTimestamp")
    except SpecError:
        created = None
    generation = meta.get("generation")
    return ObjectMeta(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        generation=generation if isinstance(generation, int) else 0,
        created=created,
        deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclass(frozen=True)
class OutputPolicy:
    mode: OutputMode = "full"
    top_k: int | None = None

    @property
    def rank(self) -> int:
        return OUTPUT_MODES.index(self.mode)

    def describe(self) -> str:
        return f"topK (k={self.top_k})" if self.mode == "topK" else self.mode


def parse_output_policy(
    data: Mapping[str, Any], where: str, mode_key: str, k_key: str
) -> OutputPolicy:
    mode = data.get(mode_key, "full")
    if mode not in OUTPUT_MODES:
        raise SpecError(f"{where}.{mode_key} must be one of full, topK or labels (got {mode!r})")
    top_k = int_field(data, k_key, where, None, 1, 1000)
    if mode == "topK" and top_k is None and k_key == "topK":
        raise SpecError(f"{where}.{mode_key} topK needs {where}.{k_key}")
    if mode != "topK" and top_k is not None:
        raise SpecError(f"{where}.{k_key} is only used with {mode_key} topK")
    return OutputPolicy(mode=mode, top_k=top_k)
