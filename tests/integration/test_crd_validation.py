"""The CRDs against a real API server: bad YAML is refused with a message a person
understands (OpenAPI schema + CEL rules), good YAML is accepted and defaulted, and
`kubectl get` shows useful columns.

What the schema cannot express (a license of another tenant, GPUs above the seats, a
missing license or key) is the operator's job: see test_operator_bad_input.py.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from tests.integration.operator_helpers import ROOT, OpsEnv

from modelseal.handlers.controller.context import MODELS, Memory, models_of_license
from modelseal.k8s.api import ApiError, Kube

pytestmark = pytest.mark.integration

DIGEST = "sha256tree:" + "0123456789abcdef" * 4


def model(**spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "modelseal.io/v1alpha1",
        "kind": "ProtectedModel",
        "metadata": {"name": "digits"},
        "spec": {
            "tenant": "acme",
            "licenseRef": {"name": "acme-gold"},
            "version": "1.0.0",
            "source": {"uri": "s3://sealed/digits.msb", "digest": DIGEST, "plaintextSize": "64Mi"},
            "vault": {"transitKey": "digits"},
        },
    }
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def lic(**spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "modelseal.io/v1alpha1",
        "kind": "ModelLicense",
        "metadata": {"name": "acme-gold"},
        "spec": {
            "tenant": "acme",
            "allowedModels": ["digits"],
            "seats": {"maxReplicas": 2, "maxGPUs": 2},
        },
    }
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def without(doc: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def edit(doc: dict[str, Any], fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    fn(out)
    return out


def _src(**kw: Any) -> dict[str, Any]:
    src: dict[str, Any] = {
        "uri": "s3://sealed/digits.msb",
        "digest": DIGEST,
        "plaintextSize": "64Mi",
    }
    src.update(kw)
    return src


BAD: list[tuple[str, dict[str, Any], str]] = [
    # ---- ProtectedModel: missing fields, wrong types, ranges
    ("pm: no tenant", without(model(), "spec", "tenant"), "spec.tenant: Required value"),
    (
        "pm: no licenseRef",
        without(model(), "spec", "licenseRef"),
        "spec.licenseRef: Required value",
    ),
    (
        "pm: no digest",
        without(model(), "spec", "source", "digest"),
        "spec.source.digest: Required value",
    ),
    ("pm: no spec", without(model(), "spec"), "spec: Required value"),
    (
        "pm: negative replicas",
        model(serving={"replicas": -1}),
        "should be greater than or equal to 0",
    ),
    ("pm: replicas not a number", model(serving={"replicas": "two"}), "must be of type integer"),
    (
        "pm: too many GPUs per replica",
        model(serving={"gpusPerReplica": 99}),
        "should be less than or equal to 16",
    ),
    (
        "pm: GPUs in resources",
        model(serving={"resources": {"limits": {"nvidia.com/gpu": 1}}}),
        "set GPUs with serving.gpusPerReplica",
    ),
    ("pm: tenant with spaces", model(tenant="Acme Corp"), "spec.tenant in body should match"),
    ("pm: misplaced field", model(replicas=2), 'unknown field "spec.replicas"'),
    # ---- sources
    (
        "pm: http scheme",
        model(source=_src(uri="http://example.com/m.msb")),
        "unsupported scheme (http); use s3://, https:// or pvc://",
    ),
    (
        "pm: ftp scheme",
        model(source=_src(uri="ftp://example.com/m.msb")),
        "unsupported scheme (ftp)",
    ),
    ("pm: uri with a space", model(source=_src(uri="s3://sealed/my model.msb")), "with no spaces"),
    (
        "pm: md5 digest",
        model(source=_src(digest="md5:0123")),
        "spec.source.digest in body should match",
    ),
    (
        "pm: short digest",
        model(source=_src(digest="sha256:abc")),
        "spec.source.digest in body should match",
    ),
    (
        "pm: blake3 digest without its tree",
        model(source=_src(digest="blake3:" + "ab" * 32)),
        "spec.source.digest in body should match",
    ),
    (
        "pm: upper-case algorithm",
        model(source=_src(digest="BLAKE3TREE:" + "ab" * 32)),
        "spec.source.digest in body should match",
    ),
    (
        "pm: negative size",
        model(source=_src(plaintextSize="-5Mi")),
        "plaintextSize must be a positive",
    ),
    (
        "pm: size not a quantity",
        model(source=_src(plaintextSize="lots")),
        "plaintextSize must be a positive",
    ),
    (
        "pm: endpoint for https",
        model(source=_src(uri="https://h.example/m", endpoint="http://s3:9000")),
        "source.endpoint is only meaningful for s3:// URIs",
    ),
    (
        "pm: credentials for pvc",
        model(source=_src(uri="pvc://claim/m.msb", credentialsSecretRef={"name": "x"})),
        "credentialsSecretRef is not used for pvc:// URIs",
    ),
    (
        "pm: bad publisher key",
        model(source=_src(publisherKeys=["not-a-key"])),
        "spec.source.publisherKeys[0] in body should match",
    ),
    # ---- serving, gateway, policy, rollout
    (
        "pm: unknown output policy",
        model(outputPolicy={"mode": "everything"}),
        'Unsupported value: "everything"',
    ),
    (
        "pm: topK without k",
        model(outputPolicy={"mode": "topK"}),
        "outputPolicy.mode topK needs outputPolicy.topK",
    ),
    (
        "pm: k without topK",
        model(outputPolicy={"mode": "labels", "topK": 3}),
        "outputPolicy.topK is only used with mode topK",
    ),
    (
        "pm: replicas without shared counters",
        model(serving={"replicas": 3}),
        "serving.replicas above 1 needs gateway.quotaStore: redis",
    ),
    (
        "pm: redis without url",
        model(gateway={"quotaStore": "redis"}),
        "gateway.quotaStore: redis needs gateway.redisUrl",
    ),
    (
        "pm: quota state claim with redis",
        model(
            gateway={
                "quotaStore": "redis",
                "redisUrl": "redis://r:6379/0",
                "quotaStateClaimName": "state",
            }
        ),
        "gateway.quotaStateClaimName is only used with quotaStore embedded",
    ),
    (
        "pm: rollout cannot progress",
        model(rollout={"maxSurge": 0, "maxUnavailable": 0}),
        "cannot both be zero",
    ),
    (
        "pm: bad name",
        edit(model(), lambda d: d["metadata"].update(name="digits-" + "x" * 50)),
        "metadata.name must be a DNS-1035 label",
    ),
    (
        "pm: bad toleration",
        model(serving={"tolerations": [{"operator": "Maybe"}]}),
        'Unsupported value: "Maybe"',
    ),
    # ---- ModelLicense
    (
        "ml: end before start",
        lic(notBefore="2027-01-01T00:00:00Z", notAfter="2026-01-01T00:00:00Z"),
        "notAfter must be later than notBefore",
    ),
    (
        "ml: end not a time",
        lic(notAfter="next year"),
        "spec.notAfter in body must be of type date-time",
    ),
    ("ml: no seats", without(lic(), "spec", "seats"), "spec.seats: Required value"),
    ("ml: no models", lic(allowedModels=[]), "should have at least 1 items"),
    (
        "ml: negative GPUs",
        lic(seats={"maxReplicas": 1, "maxGPUs": -1}),
        "should be greater than or equal to 0",
    ),
    ("ml: burst without rate", lic(quotas={"burst": 5}), "quotas.burst needs quotas.ratePerSecond"),
    ("ml: zero rate", lic(quotas={"ratePerSecond": 0}), "should be greater than 0"),
    (
        "ml: day above month",
        lic(quotas={"perDay": 10, "perMonth": 5}),
        "quotas.perDay cannot exceed quotas.perMonth",
    ),
    ("ml: unknown ceiling", lic(outputPolicy={"maxMode": "raw"}), 'Unsupported value: "raw"'),
    (
        "ml: reason without revocation",
        lic(revocationReason="unpaid"),
        "revocationReason is only set on a revoked license",
    ),
    (
        "ml: quota for an unlisted model",
        lic(modelQuotas={"other": {"perDay": 1}}),
        "modelQuotas may only name models listed in allowedModels",
    ),
    ("ml: bad model name", lic(allowedModels=["Digits"]), "in body should match"),
]


@pytest.fixture(scope="module")
def crd_ns(ops_cluster: OpsEnv) -> str:
    return ops_cluster.namespace("crd")


@pytest.mark.parametrize(("case", "doc", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_clear_message(
    ops_cluster: OpsEnv, crd_ns: str, case: str, doc: dict[str, Any], message: str
) -> None:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = crd_ns
    accepted, output = ops_cluster.apply(doc)
    assert not accepted, f"{case}: the API server accepted it:\n{output}"
    assert message in output, f"{case}: message not found in:\n{output}"


def test_enough_bad_cases() -> None:
    assert len(BAD) >= 20


def test_good_input_is_accepted_and_defaulted(ops_cluster: OpsEnv, crd_ns: str) -> None:
    for doc in (model(), lic(notBefore="2026-01-01T00:00:00Z", notAfter="2027-01-01T00:00:00Z")):
        doc["metadata"]["namespace"] = crd_ns
        accepted, output = ops_cluster.apply(doc)
        assert accepted, output
    pm = ops_cluster.get_pm(crd_ns, "digits")
    assert pm is not None
    spec = pm["spec"]
    assert spec["serving"] == {"replicas": 1, "gpusPerReplica": 0}
    assert spec["gateway"] == {"quotaStore": "embedded"}
    assert spec["outputPolicy"] == {"mode": "full"}
    assert spec["rollout"] == {"maxSurge": 0, "maxUnavailable": 1}
    lic_obj = ops_cluster.get_license(crd_ns, "acme-gold")
    assert lic_obj is not None and lic_obj["spec"]["revoked"] is False


def test_integer_byte_sizes_and_multi_replica_with_redis(ops_cluster: OpsEnv, crd_ns: str) -> None:
    doc = model(
        source=_src(plaintextSize=1048576, digest="blake3tree:" + "ab" * 32),
        serving={"replicas": 3, "gpusPerReplica": 1},
        gateway={"quotaStore": "redis", "redisUrl": "redis://redis.quota.svc:6379/0"},
        rollout={"maxSurge": "25%", "maxUnavailable": 0},
    )
    doc["metadata"].update(name="multi", namespace=crd_ns)
    accepted, output = ops_cluster.apply(doc)
    assert accepted, output


def test_examples_are_valid(ops_cluster: OpsEnv) -> None:
    ns = "team-a"
    ops_cluster.kubectl("create", "namespace", ns)
    for name in ("modellicense.yaml", "protectedmodel.yaml"):
        doc = yaml.safe_load((ROOT / "examples" / name).read_text())
        accepted, output = ops_cluster.apply(doc)
        assert accepted, f"examples/{name}: {output}"
    ops_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_printer_columns_short_name_and_category(ops_cluster: OpsEnv, crd_ns: str) -> None:
    header = ops_cluster.kubectl("get", "pm", "-n", crd_ns).splitlines()[0].split()
    assert header == ["NAME", "READY", "REASON", "LICENSE", "REPLICAS", "DESIRED", "VERSION", "AGE"]
    wide = ops_cluster.kubectl("get", "pm", "-n", crd_ns, "-o", "wide").splitlines()[0].split()
    assert "ENDPOINT" in wide and "MESSAGE" in wide
    header = ops_cluster.kubectl("get", "modellicenses", "-n", crd_ns).splitlines()[0].split()
    assert header[:4] == ["NAME", "TENANT", "VALID", "REASON"]
    # issue 14: usage at a glance, by the short name too
    header = ops_cluster.kubectl("get", "ml", "-n", crd_ns).splitlines()[0].split()
    assert header[4:8] == ["TODAY", "MONTH", "EXHAUSTED", "EXPIRES"]
    both = ops_cluster.kubectl("get", "modelseal", "-n", crd_ns)
    assert "protectedmodel.modelseal.io/digits" in both
    assert "modellicense.modelseal.io/acme-gold" in both
    explained = ops_cluster.kubectl("explain", "pm.spec.source.uri")
    assert "s3://bucket/key" in explained


def test_status_is_a_subresource(ops_cluster: OpsEnv, crd_ns: str) -> None:
    """A spec update cannot write status, and a status write does not bump the generation."""
    doc = model()
    doc["metadata"].update(name="subres", namespace=crd_ns)
    doc["status"] = {"observedGeneration": 99}
    accepted, output = ops_cluster.apply(doc)
    assert accepted, output
    pm = ops_cluster.get_pm(crd_ns, "subres")
    assert pm is not None and "status" not in pm
    gen = pm["metadata"]["generation"]
    ops_cluster.custom().patch_namespaced_custom_object_status(
        "modelseal.io",
        "v1alpha1",
        crd_ns,
        "protectedmodels",
        "subres",
        {
            "status": {
                "observedGeneration": gen,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "Test",
                        "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                        "observedGeneration": gen,
                    }
                ],
            }
        },
    )
    pm = ops_cluster.get_pm(crd_ns, "subres")
    assert pm is not None
    assert pm["metadata"]["generation"] == gen
    assert pm["status"]["conditions"][0]["reason"] == "Test"


def test_models_are_selected_by_their_license(ops_cluster: OpsEnv, crd_ns: str) -> None:
    """`spec.licenseRef.name` is a selectable field (the operator lists a license's models
    with it instead of the whole namespace); a field the CRD does not declare is refused
    with 400, which is what sends the operator back to listing the namespace."""
    for name, license_name in (("sel-a", "gold"), ("sel-b", "silver"), ("sel-c", "gold")):
        doc = model(licenseRef={"name": license_name})
        doc["metadata"].update(name=name, namespace=crd_ns)
        accepted, output = ops_cluster.apply(doc)
        assert accepted, output
    out = ops_cluster.kubectl(
        "get", "pm", "-n", crd_ns, "--field-selector", "spec.licenseRef.name=gold", "-o", "name"
    )
    assert out.split() == ["protectedmodel.modelseal.io/sel-a", "protectedmodel.modelseal.io/sel-c"]

    async def select() -> tuple[list[str], bool, int]:
        kube = Kube(ops_cluster.cluster.kube_client())
        memory = Memory()
        try:
            found = await models_of_license(kube, memory, crd_ns, "silver")
            with pytest.raises(ApiError) as refused:
                await kube.list(MODELS, crd_ns, field_selector="spec.version=1.0.0")
        finally:
            await kube.close()
        return (
            [m["metadata"]["name"] for m in found],
            memory.license_selectable,
            refused.value.status,
        )

    names, selectable, status = asyncio.run(select())
    assert names == ["sel-b"]
    assert selectable
    assert status == 400
