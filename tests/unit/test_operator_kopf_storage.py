"""kopf's diff base is built only for kinds with change handlers (ProtectedModel), and the
reconciler's client decodes the API server's JSON with orjson, the standard library where
orjson refuses; both behave as before for what they keep."""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf
import pytest

from modelseal.config import Settings
from modelseal.handlers.operator import (
    CHANGE_HANDLED_KINDS,
    ChangeHandledDiffBaseStorage,
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


def _storages() -> tuple[kopf.AnnotationsDiffBaseStorage, ChangeHandledDiffBaseStorage]:
    args: dict[str, Any] = {"prefix": "modelseal.io", "key": "last-handled-configuration"}
    return kopf.AnnotationsDiffBaseStorage(**args), ChangeHandledDiffBaseStorage(**args)


def test_models_get_kopfs_own_essence() -> None:
    assert "ProtectedModel" in CHANGE_HANDLED_KINDS
    base, ours = _storages()
    body = kopf.Body(copy.deepcopy(_MODEL))  # type: ignore[arg-type]
    assert ours.build(body=body) == base.build(body=body)
    assert ours.build(body=body)["spec"] == _MODEL["spec"]


@pytest.mark.parametrize("kind", ["Pod", "Deployment", "ModelLicense", "Secret", None])
def test_other_kinds_get_an_empty_essence_without_copying(
    kind: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ours = _storages()
    body = copy.deepcopy(_POD)
    if kind is None:
        del body["kind"]
    else:
        body["kind"] = kind

    def no_copy(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the body was copied")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    assert ours.build(body=kopf.Body(body)) == {}  # type: ignore[arg-type]


def test_configure_kopf_installs_it_with_our_prefix() -> None:
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, Settings())
    storage = kopf_settings.persistence.diffbase_storage
    assert isinstance(storage, ChangeHandledDiffBaseStorage)
    body = kopf.Body(copy.deepcopy(_MODEL))  # type: ignore[arg-type]
    # the annotation it reads and writes is the one kopf stored before this change
    assert storage.fetch(body=body) == {}
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
