"""kopf keeps no diff base (the operator's only change handler is a deletion handler), and
the reconciler's client decodes the API server's JSON with orjson, the standard library where
orjson refuses; both behave as before for what they keep."""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf
import pytest

from modelseal.config import Settings
from modelseal.handlers.operator import (
    NoDiffBaseStorage,
    changing_handlers_are_deletions_only,
    configure_kopf,
)
from modelseal.k8s.api import _decode

_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"}},
    "spec": {"serviceAccountName": "sa", "containers": [{"name": "c", "image": "i"}]},
    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
}
_MODEL: dict[str, Any] = {
    "apiVersion": "modelseal.io/v1alpha1",
    "kind": "ProtectedModel",
    "metadata": {
        "name": "m",
        "namespace": "ns",
        "labels": {"x": "y"},
        "annotations": {"note": "kept", "modelseal.io/last-handled-configuration": "{}"},
    },
    "spec": {"modelName": "digits", "bundle": {"uri": "s3://b/k"}},
    "status": {"conditions": []},
}


@pytest.mark.parametrize("body", [_MODEL, _POD, {}], ids=["model", "pod", "empty"])
def test_every_essence_is_empty_and_nothing_is_stored(
    body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = NoDiffBaseStorage()

    def no_copy(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the body was copied")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    kbody = kopf.Body(dict(body))  # type: ignore[arg-type]
    # fetched (even with an earlier version's annotation) and built alike: no change
    assert storage.fetch(body=kbody) == storage.build(body=kbody) == {}
    patch = kopf.Patch()
    storage.store(body=kbody, patch=patch, essence=kopf.BodyEssence(spec={"a": 1}))
    assert not patch  # no PATCH of the object for kopf's bookkeeping


def test_registry_check_finds_a_change_handler_other_than_deletion() -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.delete("modelseal.io", "v1alpha1", "protectedmodels", registry=registry)
    async def deleted(**_: Any) -> None: ...

    assert changing_handlers_are_deletions_only(registry)

    @kopf.on.update("modelseal.io", "v1alpha1", "protectedmodels", registry=registry)
    async def updated(**_: Any) -> None: ...

    assert not changing_handlers_are_deletions_only(registry)


def test_configure_kopf_installs_it() -> None:
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, Settings())
    storage = kopf_settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBaseStorage)
    assert kopf_settings.persistence.finalizer == "modelseal.io/finalizer"
    # listings in pages and idle workers gone soon: kopf holds every listed or waiting
    # event whole in memory (issue 13 §3)
    assert kopf_settings.watching.chunk_size == 100
    assert kopf_settings.queueing.idle_timeout <= 0.1
    assert kopf_settings.queueing.worker_limit == Settings().operator_kopf_worker_limit


@pytest.mark.parametrize(
    "raw",
    [
        b'{"kind":"PodList","items":[{"metadata":{"name":"a"}}]}',
        '{"message":"caf\u00e9 \\ud83d\\ude00","n":1.5e3}'.encode(),
        b'{"big": 123456789012345678901234567890}',  # orjson: a float; the stdlib: exact
        b'{"max": 18446744073709551615, "min": -9223372036854775808}',
    ],
)
def test_decode_equals_the_standard_library(raw: bytes) -> None:
    assert _decode(raw) == json.loads(raw)


def test_what_neither_parses_raises_as_before() -> None:
    with pytest.raises(ValueError):
        _decode(b'{"bad": "\xff"}')  # not UTF-8
    with pytest.raises(ValueError):
        _decode(b'{"cut": ')


def test_decode_keeps_only_objects() -> None:
    assert _decode(b"[1, 2]") == {}


def test_kopfs_watch_stream_decodes_with_fastjson() -> None:
    """kopf's watch stream reads its events through the module-level ``json`` of
    `kopf._cogs.clients.api` (kopf is pinned): after `configure_kopf` that is fastjson, and
    the events decode as the standard library decodes them."""
    import importlib

    from modelseal.handlers.operator import decode_watch_events_with_orjson

    stream_module = importlib.import_module("kopf._cogs.clients.api")
    configure_kopf(kopf.OperatorSettings(), Settings())
    assert decode_watch_events_with_orjson()  # installed (again: idempotent)
    event = '{"type":"MODIFIED","object":{"metadata":{"name":"p"},"n":123456789012345678901}}'
    assert stream_module.json.loads(event) == json.loads(event)
    assert stream_module.json.loads(event.encode()) == json.loads(event)
    # what kopf's stream does with each line, read from its source so a kopf that stops
    # reading events this way fails here instead of silently decoding slower
    import inspect

    assert "json.loads(line.decode('utf-8'))" in inspect.getsource(stream_module.stream)
