"""The shape of `make bench-operator`'s object sets (issue 13 §3): no servers needed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from modelseal_devenv.bench_operator import AuditWindow, make_batch, stage_table


def test_1000_models_under_100_licenses_in_50_namespaces() -> None:
    batch = make_batch("big", 1000)
    assert len(batch.models) == 1000 and len(batch.keys) == 1000
    assert len(batch.namespaces) == 50 and len(batch.licenses) == 100
    per_license = Counter((ns, lic) for ns, _, lic in batch.models)
    assert set(per_license) == set(batch.licenses)
    assert set(per_license.values()) == {10}
    assert set(Counter(ns for ns, _, _ in batch.models).values()) == {20}


def test_one_namespace_and_a_small_batch() -> None:
    one = make_batch("one", 1000, per_namespace=1000)
    assert one.namespaces == ["one-000"] and len(one.licenses) == 100
    small = make_batch("ref", 10)
    assert len(small.namespaces) == 1 and len(small.licenses) == 1


def test_stage_table_maps_pods_to_their_model() -> None:
    batch = make_batch("big", 2)
    t0 = 1_000_000.0

    def ev(user: str, verb: str, resource: str, name: str, sub: str = "") -> dict[str, object]:
        ref = {"resource": resource, "namespace": "big-000", "name": name}
        if sub:
            ref["subresource"] = sub
        return {
            "stage": "ResponseComplete",
            "user": {"username": user},
            "verb": verb,
            "objectRef": ref,
            "responseStatus": {"code": 201},
            "requestReceivedTimestamp": "1970-01-12T13:46:42.000000Z",  # t0 + 2 s
        }

    window = AuditWindow(
        [
            ev("modelseal-bench-operator", "create", "deployments", "m-0000"),
            ev("system:kube-scheduler", "create", "pods", "m-0000-7d9f8c-abcde", "binding"),
            ev("system:kube-scheduler", "create", "pods", "other-7d9f8c-abcde", "binding"),
        ]
    )
    table = stage_table(window, batch, {("big-000", "m-0001"): t0 + 5}, t0)
    rows = {line[:44].strip(): line.split()[-1] for line in table[1:]}
    assert rows["operator: Deployment created"] == "1"
    assert rows["scheduler: Pod bound"] == "1"
    assert rows["model Ready=True"] == "1"
    assert "2.0" in next(line for line in table if "Deployment created" in line)


def test_audit_window_reads_rotated_files_by_time(tmp_path: Path) -> None:
    def line(stamp: str, verb: str) -> str:
        # compact, as the API server writes it
        doc = {"stage": "ResponseComplete", "verb": verb, "requestReceivedTimestamp": stamp}
        return json.dumps(doc, separators=(",", ":"))

    (tmp_path / "audit-2026-12-01T04-18-58.574.log").write_text(
        line("1970-01-12T13:46:39.000000Z", "early")
        + "\n"
        + line("1970-01-12T13:46:41.000000Z", "rotated")
        + "\n"
    )
    (tmp_path / "audit.log").write_text(
        line("1970-01-12T13:46:43.000000Z", "current")
        + "\n"
        + line("1970-01-12T13:46:50.000000Z", "late")
        + "\nnot json\n"
    )
    window = AuditWindow.read(tmp_path / "audit.log", 1_000_000.0, 1_000_005.0)
    assert [e["verb"] for e in window.events] == ["rotated", "current"]


def test_the_floor_creates_what_the_operator_renders_without_owners() -> None:
    from modelseal.config import Settings
    from modelseal_devenv.bench_floor import COLLECTIONS, rendered_objects
    from modelseal_devenv.bench_operator import license_doc, model_doc

    settings = Settings(vault_addr="https://vault.example:8200")
    objects = rendered_objects(
        model_doc("floor-000", "m-0000", "lic-0"), license_doc("floor-000", "lic-0"), settings
    )
    kinds = [o["kind"] for o in objects]
    assert kinds == ["ServiceAccount", "ConfigMap", "Service", "NetworkPolicy", "Deployment"]
    assert set(kinds) <= set(COLLECTIONS)
    for obj in objects:
        assert obj["metadata"]["namespace"] == "floor-000"
        # a dependent whose owner does not exist would be deleted by the garbage collector
        assert "ownerReferences" not in obj["metadata"]
    deployment = objects[-1]
    assert deployment["spec"]["replicas"] == 1  # granted: the model's one replica
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == objects[0]["metadata"]["name"]
