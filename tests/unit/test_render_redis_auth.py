"""The quota Redis credentials reach the gateway as files only (issue 12, High 2).

Everything the operator renders for a model with ``quotaStore: redis`` is searched for the
password (as written, and base64 as a Secret holds it): it may be in the model's own
``<name>-redis-auth`` Secret and nowhere else, not in an env var, an argument, an
annotation or the license ConfigMap; only the gateway container mounts it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from typing import Any

import pytest

from modelseal.config import Settings
from modelseal.models.spec import parse_model
from modelseal.render import manifests
from modelseal.render.model import render_model

SOURCE_NS = "modelseal-system"
SOURCE = "modelseal-redis-auth"


def _model(store: str = "redis", replicas: int = 2) -> dict[str, Any]:
    gateway: dict[str, Any] = {"quotaStore": store}
    if store == "redis":
        gateway["redisUrl"] = "redis://modelseal-redis.modelseal-system.svc:6379/0"
    return {
        "apiVersion": "modelseal.io/v1alpha1",
        "kind": "ProtectedModel",
        "metadata": {
            "name": "digits",
            "namespace": "team-a",
            "uid": "0f1e2d3c-0000-4000-8000-000000000001",
            "generation": 1,
        },
        "spec": {
            "tenant": "acme",
            "licenseRef": {"name": "gold"},
            "version": "1.0.0",
            "source": {
                "uri": "s3://sealed/digits.msb",
                "digest": "sha256tree:" + "ab" * 32,
                "plaintextSize": "64Mi",
            },
            "vault": {"transitKey": "digits"},
            "serving": {"replicas": replicas},
            "gateway": gateway,
        },
    }


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("MODELSEAL_"):
            monkeypatch.delenv(key)
    return Settings(redis_auth_secret=SOURCE, redis_auth_secret_namespace=SOURCE_NS)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_password_only_in_the_models_secret(settings: Settings) -> None:
    password = secrets.token_urlsafe(36)
    model = parse_model(_model())
    rendered = render_model(model, None, True, settings)
    assert rendered.redis_auth == "digits-redis-auth"
    secret = manifests.redis_auth_secret(
        model,
        settings,
        # the chart Secret's data as the API server returns it, with a key not to copy
        {"username": _b64("modelseal"), "password": _b64(password), "users.acl": _b64("x")},
    )
    assert secret["data"] == {"username": _b64("modelseal"), "password": _b64(password)}
    assert secret["metadata"]["name"] == rendered.redis_auth
    assert secret["metadata"]["ownerReferences"][0]["uid"] == model.uid
    text = json.dumps(rendered.objects())
    for needle in (password, _b64(password)):
        assert needle not in text
    # nor anything that could carry it by reference: no env var reads the Secret
    pod = rendered.deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"] + pod["initContainers"]}
    for c in containers.values():
        for e in c.get("env") or []:
            assert (
                "valueFrom" not in e
                or "secretKeyRef" not in e["valueFrom"]
                or (e["valueFrom"]["secretKeyRef"]["name"] != rendered.redis_auth)
            ), e
        assert "envFrom" not in c or all(
            (f.get("secretRef") or {}).get("name") != rendered.redis_auth for f in c["envFrom"]
        )
    gateway = containers["gateway"]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["MODELSEAL_REDIS_USERNAME_FILE"] == "/var/run/modelseal/redis/username"
    assert env["MODELSEAL_REDIS_PASSWORD_FILE"] == "/var/run/modelseal/redis/password"
    assert "@" not in env["MODELSEAL_REDIS_URL"]  # no credentials in the URL either
    # mounted read-only into the gateway, and into nothing else
    mounting = {
        name
        for name, c in containers.items()
        for m in c.get("volumeMounts") or []
        if m["name"] == manifests.REDIS_AUTH_VOLUME
    }
    assert mounting == {"gateway"}
    (mount,) = [m for m in gateway["volumeMounts"] if m["name"] == manifests.REDIS_AUTH_VOLUME]
    assert mount == {
        "name": "redis-auth",
        "mountPath": "/var/run/modelseal/redis",
        "readOnly": True,
    }
    (volume,) = [v for v in pod["volumes"] if v["name"] == manifests.REDIS_AUTH_VOLUME]
    assert volume["secret"]["secretName"] == rendered.redis_auth
    assert [i["key"] for i in volume["secret"]["items"]] == ["username", "password"]


def test_no_credentials_without_redis_or_without_a_source(settings: Settings) -> None:
    embedded = render_model(parse_model(_model("embedded", replicas=1)), None, True, settings)
    assert embedded.redis_auth is None
    unset = Settings()
    external = render_model(parse_model(_model()), None, True, unset)
    assert external.redis_auth is None
    for rendered in (embedded, external):
        text = json.dumps(rendered.deployment)
        assert "redis-auth" not in text and "MODELSEAL_REDIS_PASSWORD_FILE" not in text


def test_the_source_secret_needs_its_namespace() -> None:
    with pytest.raises(ValueError, match="redis_auth_secret_namespace"):
        Settings(redis_auth_secret=SOURCE)
