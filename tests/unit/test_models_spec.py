"""ProtectedModel / ModelLicense parsing: what the operator accepts and the messages it gives."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from modelseal.models.quantity import (
    QuantityError,
    format_bytes,
    parse_bytes,
    parse_quantity,
    quantities_equal,
)
from modelseal.models.spec import SpecError, parse_license, parse_model

DIGEST = "sha256tree:" + "ab" * 32


def model_body(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "modelseal.io/v1alpha1",
        "kind": "ProtectedModel",
        "metadata": {
            "name": "digits",
            "namespace": "team-a",
            "uid": "uid-1",
            "generation": 3,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "tenant": "acme",
            "licenseRef": {"name": "acme-gold"},
            "version": "1.0.0",
            "source": {"uri": "s3://models/digits.msb", "digest": DIGEST, "plaintextSize": "64Mi"},
            "vault": {"transitKey": "digits-key"},
        },
    }
    body["spec"].update(spec)
    return body


def license_body(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "modelseal.io/v1alpha1",
        "kind": "ModelLicense",
        "metadata": {"name": "acme-gold", "namespace": "team-a", "uid": "lic-1", "generation": 1},
        "spec": {
            "tenant": "acme",
            "allowedModels": ["digits"],
            "seats": {"maxReplicas": 2, "maxGPUs": 2},
        },
    }
    body["spec"].update(spec)
    return body


def test_minimal_model_gets_defaults() -> None:
    model = parse_model(model_body())
    assert model.key == "team-a/digits"
    assert model.model_name == "digits"
    assert model.serving.replicas == 1
    assert model.serving.gpus_per_replica == 0
    assert model.gateway.api_keys_secret == "digits-api-keys"
    assert model.gateway.quota_store == "embedded"
    assert model.output_policy.mode == "full"
    assert model.source.plaintext_bytes == 64 * 1024 * 1024
    assert model.created == datetime(2026, 1, 1, tzinfo=UTC)


def test_either_digest_algorithm_is_a_pin() -> None:
    for pin in ("blake3tree:" + "cd" * 32, DIGEST):
        body = model_body()
        body["spec"]["source"]["digest"] = pin
        assert parse_model(body).source.digest == pin


def test_pvc_uri_parts() -> None:
    src = {"uri": "pvc://bundles/team-a/digits.msb", "digest": DIGEST, "plaintextSize": 1000}
    model = parse_model(model_body(source=src))
    assert model.source.pvc_claim == "bundles"
    assert model.source.pvc_path == "team-a/digits.msb"


BAD_MODELS: list[tuple[str, Any, str]] = [
    ("no tenant", {"tenant": None}, "spec.tenant is required"),
    ("tenant wrong type", {"tenant": 5}, "spec.tenant must be a string"),
    ("no license", {"licenseRef": None}, "spec.licenseRef.name is required"),
    (
        "http scheme",
        {"source": {"uri": "http://x/y", "digest": DIGEST, "plaintextSize": 1}},
        "unsupported scheme (http)",
    ),
    (
        "ftp scheme",
        {"source": {"uri": "ftp://x/y", "digest": DIGEST, "plaintextSize": 1}},
        "unsupported scheme (ftp)",
    ),
    (
        "bad digest",
        {"source": {"uri": "s3://bk1/k", "digest": "md5:00", "plaintextSize": 1}},
        "spec.source.digest must be blake3tree: or sha256tree:",
    ),
    (
        "digest and a newline",
        {"source": {"uri": "s3://bk1/k", "digest": DIGEST + "\n", "plaintextSize": 1}},
        "spec.source.digest must be blake3tree: or sha256tree:",
    ),
    (
        "upper-case digest",
        {"source": {"uri": "s3://bk1/k", "digest": DIGEST.upper(), "plaintextSize": 1}},
        "spec.source.digest must be blake3tree: or sha256tree:",
    ),
    ("no size", {"source": {"uri": "s3://bk1/k", "digest": DIGEST}}, "plaintextSize is required"),
    (
        "zero size",
        {"source": {"uri": "s3://bk1/k", "digest": DIGEST, "plaintextSize": 0}},
        "more than zero",
    ),
    (
        "fractional size",
        {"source": {"uri": "s3://bk1/k", "digest": DIGEST, "plaintextSize": "1.5"}},
        "whole number",
    ),
    ("negative replicas", {"serving": {"replicas": -1}}, "between 0 and 64"),
    ("replicas as string", {"serving": {"replicas": "2"}}, "must be a whole number"),
    ("too many gpus", {"serving": {"gpusPerReplica": 17}}, "between 0 and 16"),
    (
        "gpu in resources",
        {"serving": {"resources": {"limits": {"nvidia.com/gpu": 1}}}},
        "gpusPerReplica",
    ),
    (
        "unknown output policy",
        {"outputPolicy": {"mode": "everything"}},
        "must be one of full, topK or labels",
    ),
    ("topK without k", {"outputPolicy": {"mode": "topK"}}, "needs spec.outputPolicy.topK"),
    ("k without topK", {"outputPolicy": {"mode": "full", "topK": 3}}, "only used with mode topK"),
    ("two replicas embedded", {"serving": {"replicas": 2}}, "needs spec.gateway.quotaStore: redis"),
    ("redis without url", {"gateway": {"quotaStore": "redis"}}, "needs spec.gateway.redisUrl"),
    ("zero rollout", {"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}}, "cannot both be zero"),
    (
        "path traversal pvc",
        {"source": {"uri": "pvc://claim/../etc/x", "digest": DIGEST, "plaintextSize": 1}},
        "'..' path segments",
    ),
    (
        "endpoint with https",
        {
            "source": {
                "uri": "https://h/x",
                "digest": DIGEST,
                "plaintextSize": 1,
                "endpoint": "http://s3:9000",
            }
        },
        "only meaningful for s3://",
    ),
    ("bad toleration", {"serving": {"tolerations": [{"operator": "Maybe"}]}}, "Exists or Equal"),
    ("bad transit key", {"vault": {"transitKey": "a b"}}, "transitKey is not a valid"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
def test_bad_models_are_refused_with_a_message(case: str, change: Any, message: str) -> None:
    body = model_body()
    for key, value in change.items():
        if value is None:
            body["spec"].pop(key, None)
        else:
            body["spec"][key] = value
    with pytest.raises(SpecError) as err:
        parse_model(body)
    assert message in str(err.value), case


def test_bad_name_is_refused() -> None:
    body = model_body()
    body["metadata"]["name"] = "Digits_1"
    with pytest.raises(SpecError, match="DNS-1035"):
        parse_model(body)


def test_spec_missing_entirely() -> None:
    body = model_body()
    del body["spec"]
    with pytest.raises(SpecError, match="spec is required"):
        parse_model(body)


def test_garbage_never_raises_anything_but_spec_error() -> None:
    for spec in [[], "x", 5, {"source": "s3://x"}, {"serving": []}, {"gateway": 3}]:
        body = model_body()
        body["spec"] = spec
        with pytest.raises(SpecError):
            parse_model(body)


def test_license_parses() -> None:
    lic = parse_license(
        license_body(
            notBefore="2026-01-01T00:00:00Z",
            notAfter="2027-01-01T00:00:00+02:00",
            quotas={"ratePerSecond": 5, "burst": 10, "perDay": 100},
            modelQuotas={"digits": {"perDay": 10}},
            outputPolicy={"maxMode": "topK", "maxTopK": 5},
        )
    )
    assert lic.not_after == datetime(2026, 12, 31, 22, 0, tzinfo=UTC)
    assert lic.quotas.rate_per_second == 5.0
    assert lic.model_quotas["digits"].per_day == 10
    assert lic.output_ceiling.mode == "topK" and lic.output_ceiling.top_k == 5
    assert lic.allows("digits") and not lic.allows("other")


BAD_LICENSES: list[tuple[str, dict[str, Any], str]] = [
    (
        "end before start",
        {"notBefore": "2027-01-01T00:00:00Z", "notAfter": "2026-01-01T00:00:00Z"},
        "notAfter must be later",
    ),
    ("naive time", {"notAfter": "2027-01-01T00:00:00"}, "time zone"),
    ("not a time", {"notAfter": "tomorrow"}, "RFC 3339"),
    ("no models", {"allowedModels": []}, "non-empty list"),
    ("bad model name", {"allowedModels": ["Bad Name"]}, "invalid entry"),
    ("no seats", {"seats": None}, "spec.seats is required"),
    ("negative seats", {"seats": {"maxReplicas": -1, "maxGPUs": 0}}, "between 0 and 10000"),
    ("burst without rate", {"quotas": {"burst": 3}}, "burst needs"),
    ("zero rate", {"quotas": {"ratePerSecond": 0}}, "more than zero"),
    (
        "quota for unlisted model",
        {"modelQuotas": {"other": {"perDay": 1}}},
        "not in spec.allowedModels",
    ),
    ("revoked not bool", {"revoked": "yes"}, "true or false"),
]


@pytest.mark.parametrize(
    ("case", "change", "message"), BAD_LICENSES, ids=[c[0] for c in BAD_LICENSES]
)
def test_bad_licenses(case: str, change: dict[str, Any], message: str) -> None:
    body = copy.deepcopy(license_body())
    for key, value in change.items():
        if value is None:
            body["spec"].pop(key)
        else:
            body["spec"][key] = value
    with pytest.raises(SpecError) as err:
        parse_license(body)
    assert message in str(err.value), case


@pytest.mark.parametrize(
    ("text", "value"),
    [("1Gi", 2**30), ("512Mi", 512 * 2**20), ("1k", 1000), ("500m", 0.5), ("1e3", 1000), (7, 7)],
)
def test_quantities(text: str | int, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


def test_quantity_helpers() -> None:
    assert quantities_equal("1Gi", "1024Mi")
    assert quantities_equal("0.5", "500m")
    assert not quantities_equal("1G", "1Gi")
    assert format_bytes(2**30) == "1Gi"
    assert format_bytes(1536 * 2**20) == "1536Mi"
    assert format_bytes(1000) == "1000"
    assert parse_bytes("2Ki") == 2048
    with pytest.raises(QuantityError):
        parse_bytes("-1")
    with pytest.raises(QuantityError):
        parse_quantity("12 apples")
