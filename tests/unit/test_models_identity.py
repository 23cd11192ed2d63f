"""Who else runs as a model's ServiceAccount (modelseal.models.identity), table-driven.

The objects are shaped as the API server returns them; ownership is the chain of
controller ownerReferences by uid (model -> Deployment -> ReplicaSet -> Pod).
"""

from __future__ import annotations

from typing import Any

import pytest

from modelseal.models.identity import (
    INDEXABLE,
    MESSAGE_LIMIT,
    REASON_IN_USE,
    IdentityCheck,
    Intruder,
    check_identity,
    identity_view,
    service_account_of,
)
from modelseal.render.names import parse_vault_name, service_account_name, vault_name

MODEL_UID = "4f1c2d3e-aaaa-4bbb-8ccc-000000000001"
SA = "gpt-4f1c2d3e"


def ref(kind: str, uid: str, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": "x/v1", "kind": kind, "name": "n", "uid": uid, "controller": controller}


def obj(name: str, uid: str, owner: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    meta.update(extra)
    return {"metadata": meta}


def pod(name: str, sa: str, owner: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    out = obj(name, f"uid-{name}", owner, **meta)
    out["spec"] = {"serviceAccountName": sa, "containers": []}
    return out


def templated(name: str, uid: str, sa: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    out = obj(name, uid, owner)
    out["spec"] = {"template": {"spec": {"serviceAccountName": sa}}}
    return out


def cronjob(name: str, sa: str) -> dict[str, Any]:
    out = obj(name, f"uid-{name}")
    out["spec"] = {"jobTemplate": {"spec": {"template": {"spec": {"serviceAccountName": sa}}}}}
    return out


# The model's own chain.
OWN_DEP = templated("gpt", "dep-1", SA, ref("ProtectedModel", MODEL_UID))
OWN_RS = templated("gpt-abc", "rs-1", SA, ref("Deployment", "dep-1"))
OWN_POD = pod("gpt-abc-x1", SA, ref("ReplicaSet", "rs-1"))
OWN = {"Deployment": [OWN_DEP], "ReplicaSet": [OWN_RS], "Pod": [OWN_POD]}


def with_(**extra: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out = {k: list(v) for k, v in OWN.items()}
    for kind, items in extra.items():
        out.setdefault(kind, []).extend(items)
    return out


CASES: list[tuple[str, dict[str, list[dict[str, Any]]], list[str], list[str]]] = [
    ("nothing at all", {}, [], []),
    ("only the model's own chain", OWN, [], []),
    (
        "other accounts are none of our business",
        with_(
            Pod=[pod("web-1", "default"), pod("web-2", "gpt")],
            Deployment=[templated("web", "d-web", "default")],
        ),
        [],
        [],
    ),
    (
        "squat Deployment still waiting for the account (no ReplicaSet Pods yet)",
        with_(Deployment=[templated("squat", "d-squat", SA)]),
        ["Deployment/squat"],
        [],
    ),
    (
        "squat Deployment with its ReplicaSet and Pod",
        with_(
            Deployment=[templated("squat", "d-squat", SA)],
            ReplicaSet=[templated("squat-1", "rs-squat", SA, ref("Deployment", "d-squat"))],
            Pod=[pod("squat-1-a", SA, ref("ReplicaSet", "rs-squat"))],
        ),
        ["Pod/squat-1-a", "Deployment/squat", "ReplicaSet/squat-1"],
        ["squat-1-a"],
    ),
    (
        "bare Pod planted with the model's account",
        with_(Pod=[pod("planted", SA)]),
        ["Pod/planted"],
        ["planted"],
    ),
    (
        "Pod already being deleted is reported but not deleted again",
        with_(Pod=[pod("leaving", SA, deletionTimestamp="2026-01-01T00:00:00Z")]),
        ["Pod/leaving"],
        [],
    ),
    (
        "Pod claiming a ReplicaSet that is not the model's",
        with_(Pod=[pod("fake", SA, ref("ReplicaSet", "rs-other"))]),
        ["Pod/fake"],
        ["fake"],
    ),
    (
        "ReplicaSet controlled by another Deployment",
        with_(ReplicaSet=[templated("other-rs", "rs-2", SA, ref("Deployment", "dep-other"))]),
        ["ReplicaSet/other-rs"],
        [],
    ),
    (
        "a second Deployment forging the model as its owner (wrong name)",
        with_(Deployment=[templated("gpt-twin", "dep-2", SA, ref("ProtectedModel", MODEL_UID))]),
        ["Deployment/gpt-twin"],
        [],
    ),
    (
        "the model's Deployment name, but not controlled by this model (an older model's)",
        {
            "Deployment": [templated("gpt", "dep-1", SA, ref("ProtectedModel", "old-uid"))],
            "ReplicaSet": [OWN_RS],
            "Pod": [OWN_POD],
        },
        ["Pod/gpt-abc-x1", "Deployment/gpt", "ReplicaSet/gpt-abc"],
        ["gpt-abc-x1"],
    ),
    (
        "a non-controller ownerReference does not make it ours",
        with_(Pod=[pod("adopted", SA, ref("ReplicaSet", "rs-1", controller=False))]),
        ["Pod/adopted"],
        ["adopted"],
    ),
    (
        "every workload kind is searched",
        with_(
            StatefulSet=[templated("ss", "u-ss", SA)],
            DaemonSet=[templated("ds", "u-ds", SA)],
            Job=[templated("job", "u-job", SA)],
            CronJob=[cronjob("cron", SA)],
        ),
        ["StatefulSet/ss", "DaemonSet/ds", "Job/job", "CronJob/cron"],
        [],
    ),
]


@pytest.mark.parametrize(
    ("objects", "intruders", "deleted"),
    [pytest.param(o, i, d, id=name) for name, o, i, d in CASES],
)
def test_check_identity(
    objects: dict[str, list[dict[str, Any]]], intruders: list[str], deleted: list[str]
) -> None:
    check = check_identity(SA, MODEL_UID, "gpt", objects)
    assert [i.ref for i in check.intruders] == intruders
    assert [name for name, _uid in check.pods_to_delete] == deleted
    assert check.clear == (not intruders)
    if intruders:
        msg = check.message()
        assert SA in msg
        for name in intruders:
            assert name in msg
    else:
        assert check.message() == ""


def test_pods_to_delete_carry_their_uid() -> None:
    check = check_identity(SA, MODEL_UID, "gpt", with_(Pod=[pod("planted", SA)]))
    assert check.pods_to_delete == (("planted", "uid-planted"),)


def test_own_pods_are_listed_for_the_migration() -> None:
    legacy = "gpt"
    objects = {
        "Deployment": [OWN_DEP],
        "ReplicaSet": [templated("gpt-old", "rs-old", legacy, ref("Deployment", "dep-1"))],
        "Pod": [pod("gpt-old-a", legacy, ref("ReplicaSet", "rs-old")), pod("x", legacy)],
    }
    check = check_identity(legacy, MODEL_UID, "gpt", objects)
    assert check.own_pods == ("gpt-old-a",)


def test_message_names_a_bounded_number() -> None:
    many = [pod(f"p{i:02d}", SA) for i in range(MESSAGE_LIMIT + 5)]
    msg = check_identity(SA, MODEL_UID, "gpt", {"Pod": many}).message()
    assert "Pod/p00" in msg and f"Pod/p{MESSAGE_LIMIT - 1:02d}" in msg
    assert f"Pod/p{MESSAGE_LIMIT:02d}" not in msg
    assert msg.rstrip().endswith("no Vault access until they are gone")
    assert "and 5 more" in msg


@pytest.mark.parametrize(
    ("kind", "spec", "expected"),
    [
        ("Pod", {"serviceAccountName": "a"}, "a"),
        ("Pod", {"serviceAccount": "b"}, "b"),  # the deprecated alias
        ("Pod", {}, "default"),
        ("Deployment", {"template": {"spec": {"serviceAccount": "c"}}}, "c"),
        ("Job", {"template": {}}, "default"),
        ("CronJob", {"jobTemplate": {"spec": {"template": {"spec": {}}}}}, "default"),
    ],
)
def test_service_account_of(kind: str, spec: dict[str, Any], expected: str) -> None:
    assert service_account_of(kind, {"spec": spec}) == expected


def test_reason_and_types() -> None:
    assert REASON_IN_USE == "ServiceAccountInUse"
    assert Intruder("Pod", "x").ref == "Pod/x"
    assert IdentityCheck("sa").clear


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "uid", "expected"),
    [
        ("gpt", "4f1c2d3e-aaaa-4bbb-8ccc-000000000001", "gpt-4f1c2d3e"),
        ("digits", "9d0c1a8e-0000-4000-8000-000000000001", "digits-9d0c1a8e"),
        ("m", "short", "m-short"),
    ],
)
def test_service_account_name(name: str, uid: str, expected: str) -> None:
    assert service_account_name(name, uid) == expected


def test_service_account_name_needs_a_uid() -> None:
    with pytest.raises(ValueError, match="no uid"):
        service_account_name("gpt", "")


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (vault_name("modelseal", "team-a", "gpt"), ("team-a", "gpt")),
        ("modelseal_team-a_gpt", ("team-a", "gpt")),
        ("modelseal_team-a", None),
        ("other_team-a_gpt", None),
        ("modelseal__gpt", None),
        ("modelseal_a_b_c", None),
    ],
)
def test_parse_vault_name(role: str, expected: tuple[str, str] | None) -> None:
    assert parse_vault_name("modelseal", role) == expected


def _indexed(objects: dict[str, list[dict[str, Any]]], account: str) -> dict[str, Any]:
    """What the operator's indices give for `account`: views of the indexable kinds that
    run as it; the other kinds as listed."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, items in objects.items():
        if kind in INDEXABLE:
            out[kind] = [
                identity_view(kind, o) for o in items if service_account_of(kind, o) == account
            ]
        else:
            out[kind] = list(items)
    return out


@pytest.mark.parametrize("objects", [pytest.param(o, id=name) for name, o, _i, _d in CASES])
def test_views_decide_as_the_whole_objects(objects: dict[str, list[dict[str, Any]]]) -> None:
    """Every kind viewed: the same verdict."""
    whole = check_identity(SA, MODEL_UID, "gpt", objects)
    views = {k: [identity_view(k, o) for o in items] for k, items in objects.items()}
    assert check_identity(SA, MODEL_UID, "gpt", views) == whole


@pytest.mark.parametrize("objects", [pytest.param(o, id=name) for name, o, _i, _d in CASES])
def test_the_index_is_clear_only_when_the_lists_are(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """From the index (only what runs as the account): clear exactly when the lists say
    clear here; never clear when they name an intruder."""
    whole = check_identity(SA, MODEL_UID, "gpt", objects)
    indexed = check_identity(SA, MODEL_UID, "gpt", _indexed(objects, SA))
    assert indexed.clear == whole.clear


def test_an_index_missing_the_models_deployment_is_not_clear() -> None:
    """The model's Pods under a Deployment the index does not hold (its template names
    another account now) look like intruders: the lists then decide (never falsely clear)."""
    dep_other_account = templated("gpt", "dep-1", "legacy", ref("ProtectedModel", MODEL_UID))
    objects = {"Deployment": [dep_other_account], "ReplicaSet": [OWN_RS], "Pod": [OWN_POD]}
    assert check_identity(SA, MODEL_UID, "gpt", objects).clear
    assert not check_identity(SA, MODEL_UID, "gpt", _indexed(objects, SA)).clear


def test_view_keeps_the_account_and_drops_the_rest() -> None:
    full = pod("p", SA, ref("ReplicaSet", "rs-1"), labels={"a": "b"})
    full["spec"]["containers"] = [{"name": "c", "image": "x"}]
    full["status"] = {"phase": "Running"}
    view = identity_view("Pod", full)
    assert view == {
        "metadata": {
            "name": "p",
            "uid": "uid-p",
            "ownerReferences": [{"kind": "ReplicaSet", "uid": "rs-1", "controller": True}],
        },
        "spec": {"serviceAccountName": SA},
    }
    assert identity_view("CronJob", cronjob("c", SA))["spec"] == {
        "jobTemplate": {"spec": {"template": {"spec": {"serviceAccountName": SA}}}}
    }
    assert service_account_of("Pod", identity_view("Pod", pod("d", ""))) == "default"
