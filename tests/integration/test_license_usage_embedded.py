"""License usage for models on the embedded store, and the usage export token's copy
(issue 14), against the real API server and a real gateway.

* The usage writer (in process, as the operator runs it) finds the model's Pod through the
  API server, asks its gateway (``GET /usage``, a real aiohttp listener of the gateway's
  own code over a real embedded store) with the token derived from the audit key in the
  model's control Secret, and writes ``status.usage.requests`` and QuotaExhausted. The Pod
  is a real API object adopted by a real ReplicaSet; it is bound to a node that does not
  exist (so no kubelet or kwok touches it) and its status, written through the status
  subresource, gives it the gateway's loopback address.
* No running Pod: QuotaExhausted Unknown ``UsageNotReadable``, saying so. A control Secret
  with another key: the gateway answers 401 and the condition says which Pod refused; the
  right key then reads the counts.
* Two ProtectedModels with one Triton model name under one license (Redis): counted,
  limited and shown apart.
* The usage export token: the writer copies the platform's Secret into
  ``<model>-usage-export`` (owned by the model), puts it back after an edit, and leaves a
  foreign Secret of that name alone, saying why.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from tests.integration.operator_helpers import GROUP, VERSION, OpsEnv, condition
from tests.integration.test_license_usage import _requests
from tests.integration.test_operator import license_doc, model_doc

from modelseal.config import Settings
from modelseal.gateway.core import Gateway
from modelseal.gateway.usage_read import usage_handler
from modelseal.handlers.licenses_usage import UsageWriter
from modelseal.k8s.api import Kube
from modelseal.models.spec import parse_license, parse_model
from modelseal.quota.license import parse_licenses
from modelseal.render.license_config import license_document
from modelseal.render.manifests import AUDIT_KEY_KEY
from modelseal.render.names import names_for, selector_labels
from modelseal.store.base import scopes_for
from modelseal.store.redis import RedisStore
from modelseal.store.usage_report import USAGE_PATH
from modelseal.testing import settings_for_tests
from modelseal_devenv.common import free_port
from modelseal_devenv.redis import RedisServer

pytestmark = pytest.mark.integration

AUDIT_KEY = "ab" * 32  # hex, as the operator writes a model's audit key


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _seed(env: OpsEnv, ns: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """License gold (perDay 10) with its first status, and model digits (embedded)."""
    custom = env.custom()
    lic = license_doc(ns, quotas={"perDay": 10})
    model = model_doc(ns, "digits", "k", gateway={"quotaStore": "embedded"}, modelName="mnist")
    lic = custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modellicenses", lic)
    model = custom.create_namespaced_custom_object(GROUP, VERSION, ns, "protectedmodels", model)
    _seed_status(env, ns)
    return lic, model


def _seed_status(env: OpsEnv, ns: str) -> None:
    """License gold's first status, as the license reconcile writes it."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    valid = {
        "type": "Valid",
        "status": "True",
        "reason": "Valid",
        "message": "",
        "lastTransitionTime": stamp,
        "observedGeneration": 1,
    }
    env.custom().patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "modellicenses", "gold", {"status": {"conditions": [valid]}}
    )


def _control_secret(env: OpsEnv, ns: str, model: dict[str, Any], key: str) -> None:
    spec = parse_model(model)
    name = names_for(ns, spec.name, spec.uid).control_secret
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "data": {AUDIT_KEY_KEY: _b64(key)},
    }
    core = env.core()
    try:
        core.replace_namespaced_secret(name, ns, body)
    except Exception:
        core.create_namespaced_secret(ns, body)


def _model_pod(env: OpsEnv, ns: str, model: dict[str, Any]) -> str:
    """A Pod of the model's Deployment as the API server holds it: the model's labels and
    ServiceAccount, adopted by a ReplicaSet, Running at 127.0.0.1 (the gateway here)."""
    spec = parse_model(model)
    names = names_for(ns, spec.name, spec.uid)
    labels = selector_labels(spec.name)
    core, apps = env.core(), env.apps()
    core.create_namespaced_service_account(
        ns, {"metadata": {"name": names.service_account, "namespace": ns}}
    )
    template = {
        "metadata": {"labels": labels},
        "spec": {
            "serviceAccountName": names.service_account,
            "nodeName": "no-such-node",  # no kubelet or kwok acts on it
            "containers": [{"name": "gateway", "image": "modelseal:test"}],
        },
    }
    pod = core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": f"{spec.name}-pod", "namespace": ns, "labels": labels},
            "spec": template["spec"],
        },
    )
    apps.create_namespaced_replica_set(
        ns,
        {
            "metadata": {"name": f"{spec.name}-rs", "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
        },
    )
    name: str = pod.metadata.name

    def adopted() -> bool:
        refs = core.read_namespaced_pod(name, ns).metadata.owner_references or []
        return any(r.kind == "ReplicaSet" and r.controller for r in refs)

    deadline = time.monotonic() + 30
    while not adopted():
        assert time.monotonic() < deadline, "the ReplicaSet did not adopt the Pod"
        time.sleep(0.2)
    core.patch_namespaced_pod_status(
        name,
        ns,
        {"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}},
    )
    return name


class GatewayUnderTest:
    """The gateway's own counters and /usage handler on a free port of 127.0.0.1."""

    def __init__(self, tmp: Path, lic: dict[str, Any], model: dict[str, Any]) -> None:
        self.port = free_port()
        (tmp / "audit-key").write_text(AUDIT_KEY)
        doc = license_document(parse_model(model), parse_license(lic), True)
        (tmp / "license.json").write_text(json.dumps(doc))
        self.gw = Gateway(settings_for_tests(tmp, audit_hmac_key_file=tmp / "audit-key"))
        (self.license,) = parse_licenses(json.dumps(doc)).values()
        self.model_name = parse_model(model).model_name
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> GatewayUnderTest:
        await self.gw.store.start()
        self.gw.reload()
        app = web.Application()
        app.router.add_get(USAGE_PATH, usage_handler(self.gw))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.gw.store.close()
        await self.gw.upstream.close()

    async def admit(self, n: int) -> list[bool]:
        scopes = scopes_for(self.license, self.model_name)
        out = []
        for i in range(n):
            now = int(time.time() * 1000)
            out.append((await self.gw.store.admit(scopes, now, f"t{i}")).decision.allowed)
        return out


async def _no_event(involved: Mapping[str, str], type_: str, reason: str, message: str) -> None:
    return None


def test_embedded_usage_is_read_from_the_models_gateway(
    ops_cluster: OpsEnv, tmp_path: Path
) -> None:
    env = ops_cluster
    ns = env.namespace("usage-emb")
    try:
        lic, model = _seed(env, ns)
        gateway = GatewayUnderTest(tmp_path, lic, model)
        settings = Settings(
            namespaces=[ns], usage_status_interval_s=0.01, gateway_metrics_port=gateway.port
        )

        async def scenario() -> None:
            kube = Kube(env.cluster.kube_client())
            writer = UsageWriter(settings, kube, CollectorRegistry(), _no_event)
            try:
                async with gateway:
                    assert await gateway.admit(12) == [True] * 10 + [False] * 2
                    # No Pod yet: nothing to ask, and the condition says so.
                    assert await writer.round() == 1
                    quota = condition(env.get_license(ns, "gold"), "QuotaExhausted")
                    assert (quota["status"], quota["reason"]) == ("Unknown", "UsageNotReadable")
                    assert "no Pod of digits runs" in quota["message"]

                    pod = _model_pod(env, ns, model)
                    # A control Secret with another key: the gateway refuses the token.
                    _control_secret(env, ns, model, "cd" * 32)
                    await asyncio.sleep(0.02)
                    assert await writer.round() == 1
                    quota = condition(env.get_license(ns, "gold"), "QuotaExhausted")
                    assert (quota["status"], quota["reason"]) == (
                        "Unknown",
                        "QuotaStoreUnavailable",
                    )
                    assert f"(Pod {pod}) answered HTTP 401" in quota["message"]

                    # The model's key (as the operator writes it): the counts.
                    _control_secret(env, ns, model, AUDIT_KEY)
                    await asyncio.sleep(0.02)
                    assert await writer.round() == 1
                    figs = _requests(env, ns, "gold")
                    assert figs["today"] == "10/10"
                    assert figs["models"]["digits"]["day"]["used"] == 10
                    assert figs["store"] == f"embedded (gateway {ns}/{pod})"
                    quota = condition(env.get_license(ns, "gold"), "QuotaExhausted")
                    assert (quota["status"], quota["reason"]) == ("True", "DailyQuotaExhausted")
            finally:
                await writer.close()
                await kube.close()

        asyncio.run(scenario())
    finally:
        env.drop_namespaces()


def test_usage_export_token_is_copied_put_back_and_foreign_left(ops_cluster: OpsEnv) -> None:
    env = ops_cluster
    ns = env.namespace("usage-tok")
    core = env.core()
    try:
        _lic, model = _seed(env, ns)
        core.create_namespaced_secret(
            ns, {"metadata": {"name": "billing", "namespace": ns}, "data": {"token": _b64("t1")}}
        )
        settings = Settings(
            namespaces=[ns],
            usage_status_interval_s=0.01,
            usage_export_url="https://metering.example.com/events",
            usage_export_token_secret="billing",
            usage_export_token_secret_namespace=ns,
        )
        copy_name = names_for(ns, "digits", parse_model(model).uid).usage_export_secret

        async def rounds(n: int) -> None:
            kube = Kube(env.cluster.kube_client())
            writer = UsageWriter(settings, kube, CollectorRegistry(), _no_event)
            try:
                for _ in range(n):
                    await writer.round()
                    await asyncio.sleep(0.02)
            finally:
                await writer.close()
                await kube.close()

        asyncio.run(rounds(1))
        copy = core.read_namespaced_secret(copy_name, ns)
        assert copy.data == {"token": _b64("t1")}
        (owner,) = copy.metadata.owner_references
        assert (owner.kind, owner.name, owner.controller) == ("ProtectedModel", "digits", True)

        # Edited (or the platform's token rotated): put back from the source.
        core.patch_namespaced_secret(copy_name, ns, {"data": {"token": _b64("forged")}})
        core.patch_namespaced_secret("billing", ns, {"data": {"token": _b64("t2")}})
        asyncio.run(rounds(1))
        assert core.read_namespaced_secret(copy_name, ns).data == {"token": _b64("t2")}

        # A Secret of that name that is not the model's is left alone.
        core.delete_namespaced_secret(copy_name, ns)
        core.create_namespaced_secret(
            ns, {"metadata": {"name": copy_name, "namespace": ns}, "data": {"token": _b64("x")}}
        )
        asyncio.run(rounds(1))
        assert core.read_namespaced_secret(copy_name, ns).data == {"token": _b64("x")}
    finally:
        env.drop_namespaces()


def test_two_models_with_one_model_name_count_apart(
    ops_cluster: OpsEnv, redis_server: RedisServer
) -> None:
    """Two ProtectedModels serving the Triton model ``digits`` under one license, in one
    Redis: each one's own counters and per-model quota are its own (model_counters), and
    the status shows them apart; the license-wide count is their sum."""
    env = ops_cluster
    ns = env.namespace("usage-twins")
    custom = env.custom()
    try:
        lic = license_doc(ns, quotas={"perDay": 100}, modelQuotas={"a": {"perDay": 3}})
        redis = {"quotaStore": "redis", "redisUrl": redis_server.url}
        bodies = [model_doc(ns, n, "k", gateway=redis, modelName="digits") for n in ("a", "b")]
        lic = custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modellicenses", lic)
        models = [
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, "protectedmodels", b)
            for b in bodies
        ]
        _seed_status(env, ns)

        async def scenario() -> None:
            store = RedisStore(redis_server.url)
            kube = Kube(env.cluster.kube_client())
            writer = UsageWriter(
                Settings(namespaces=[ns], usage_status_interval_s=0.01),
                kube,
                CollectorRegistry(),
                _no_event,
            )
            try:
                got: dict[str, list[bool]] = {}
                for model, n in zip(models, (4, 5), strict=True):
                    doc = license_document(parse_model(model), parse_license(lic), True)
                    (parsed,) = parse_licenses(json.dumps(doc)).values()
                    scopes = scopes_for(parsed, "digits")
                    got[model["metadata"]["name"]] = [
                        (
                            await store.admit(scopes, int(time.time() * 1000), f"x{i}")
                        ).decision.allowed
                        for i in range(n)
                    ]
                assert got == {"a": [True, True, True, False], "b": [True] * 5}
                assert await writer.round() == 1
            finally:
                await writer.close()
                await store.close()
                await kube.close()

        asyncio.run(scenario())
        figs = _requests(env, ns, "gold")
        assert figs["day"]["used"] == 8
        assert figs["models"]["a"]["day"] == {**figs["models"]["a"]["day"], "used": 3, "limit": 3}
        assert figs["models"]["b"]["day"]["used"] == 5
        quota = condition(env.get_license(ns, "gold"), "QuotaExhausted")
        assert quota["status"] == "True"
        assert "model a's perDay quota is used up (3/3)" in quota["message"]
    finally:
        env.drop_namespaces()
