"""The operator's decisions about owned objects, readiness and reporting
(modelseal.policies.objects, .readiness, .reporting), table-driven. Pure: no client."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from modelseal.config import Settings
from modelseal.models.spec import API_VERSION, ModelSpec, ObjectMeta, parse_model
from modelseal.models.status import MODEL_CONDITIONS, WorkloadState
from modelseal.policies import objects, readiness, reporting
from modelseal.policies.objects import ANNOTATION_RENDERED, Create, InSync, Update
from modelseal.render import manifests
from modelseal.render.model import render_model
from modelseal.render.names import ANNOTATION_DIGEST, LABEL_VERSION

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DIGEST = "sha256tree:" + "cd" * 32


def model() -> ModelSpec:
    return parse_model(
        {
            "metadata": {
                "name": "digits",
                "namespace": "team-a",
                "uid": "uid-digits",
                "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {
                "tenant": "acme",
                "licenseRef": {"name": "gold"},
                "version": "2",
                "source": {"uri": "s3://bkt/x", "digest": DIGEST, "plaintextSize": "1Mi"},
                "vault": {"transitKey": "k"},
                "gateway": {"quotaStore": "redis", "redisUrl": "redis://r:6379/0"},
            },
        }
    )


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- objects --------------------------------------------------------------------------------
def test_stamp_hashes_the_desired_object_without_changing_it() -> None:
    desired = {"kind": "Service", "metadata": {"name": "s"}, "spec": {"a": 1}}
    before = copy.deepcopy(desired)
    stamped = objects.stamp(desired)
    assert desired == before
    digest = stamped["metadata"]["annotations"][ANNOTATION_RENDERED]
    assert len(digest) == 16
    assert objects.stamp(desired) == stamped
    other = objects.stamp({**desired, "spec": {"a": 2}})
    assert other["metadata"]["annotations"][ANNOTATION_RENDERED] != digest


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({}, {}, {}),
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1}, {}, {"a": None}),
        ({}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}, {"a": {"c": None}}),
        ({"a": {"b": 1}}, {"a": {"b": 1}}, {}),
        ({"a": [1, 2]}, {"a": [2]}, {"a": [2]}),
        ({"a": 1}, {"a": {"b": 1}}, {"a": {"b": 1}}),
    ],
    ids=["empty", "same", "changed", "removed", "added map", "nested removal",
         "nested same", "list whole", "scalar to map"],
)  # fmt: skip
def test_merge_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert objects.merge_patch(old, new) == patch


def _refs(*refs: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"ownerReferences": list(refs)}}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({}, False),
        (_refs({"uid": "u", "controller": True}), True),
        (_refs({"uid": "u"}), False),
        (_refs({"uid": "v", "controller": True}), False),
        (_refs({"uid": "v", "controller": True}, {"uid": "u", "controller": True}), True),
    ],
    ids=["no owner", "controller", "owner, not controller", "another", "among others"],
)
def test_owned(obj: dict[str, Any], expected: bool) -> None:
    assert objects.owned(obj, "u") is expected


@pytest.mark.parametrize(
    ("obj", "uid", "replicas"),
    [
        ({}, None, 0),
        ({"metadata": {"uid": ""}, "spec": {}}, None, 0),
        ({"metadata": {"uid": "x"}, "spec": {"replicas": 3}}, "x", 3),
    ],
    ids=["bare", "empty", "set"],
)
def test_uid_and_replicas(obj: dict[str, Any], uid: str | None, replicas: int) -> None:
    assert objects.uid_of(obj) == uid
    assert objects.replicas_of(obj) == replicas


def test_replicas_of_nothing_and_with_replicas() -> None:
    assert objects.replicas_of(None) == 0
    rendered = render_model(model(), None, True, Settings())
    before = (rendered.replicas, rendered.deployment["spec"]["replicas"])
    kept = objects.with_replicas(rendered, 7)
    assert (kept.replicas, kept.deployment["spec"]["replicas"]) == (7, 7)
    assert (rendered.replicas, rendered.deployment["spec"]["replicas"]) == before
    assert kept.objects()[-1]["spec"]["replicas"] == 7


DESIRED = objects.stamp(
    {"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"l": "1"}}, "data": {"k": "v"}}
)
OLDER = objects.stamp(
    {"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"l": "1"}}, "data": {"k": "old"}}
)


def _edited(obj: dict[str, Any], **data: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["data"] = data
    return out


@pytest.mark.parametrize(
    ("found", "action", "drift"),
    [
        (None, Create, None),
        (DESIRED, InSync, None),
        (_edited(DESIRED, k="edited"), Update, True),
        (OLDER, Update, False),
    ],
    ids=["missing", "in sync", "edited by someone: drift", "older render: update"],
)
def test_apply_action(found: dict[str, Any] | None, action: type, drift: bool | None) -> None:
    got = objects.apply_action(DESIRED, found)
    assert isinstance(got, action)
    if isinstance(got, Update):
        assert got.drift is drift
        assert "data.k" in got.diffs


@pytest.mark.parametrize(
    ("diffs", "shown"),
    [
        (("a",), "a"),
        (tuple("abcdef"), "a, b, c, d, e, f"),
        (tuple("abcdefg"), "a, b, c, d, e, f …"),
    ],
    ids=["one", "six", "seven"],
)
def test_update_shows_six_differences(diffs: tuple[str, ...], shown: str) -> None:
    assert Update(diffs, True).shown() == shown


def _secret(**data: str) -> dict[str, Any]:
    return {"data": {k: b64(v) for k, v in data.items()}}


TOKEN, AUDIT = manifests.CONTROL_TOKEN_KEY, manifests.AUDIT_KEY_KEY
Values = objects.ControlSecretValues


@pytest.mark.parametrize(
    ("live", "want_audit", "expected"),
    [
        (None, None, Values(None, None)),
        (None, "derived", Values(None, "derived")),
        (_secret(**{TOKEN: "t", AUDIT: "a"}), None, None),
        (_secret(**{TOKEN: "t", AUDIT: "a"}), "a", None),
        (_secret(**{TOKEN: "t", AUDIT: "a"}), "derived", Values("t", "derived")),
        (_secret(**{TOKEN: "t"}), None, Values("t", None)),
        (_secret(**{AUDIT: "a"}), None, Values(None, "a")),
        (_secret(**{TOKEN: "t", AUDIT: ""}), None, Values("t", None)),
        ({}, None, Values(None, None)),
    ],
    ids=["missing", "missing, derived key", "complete", "complete, derived matches",
         "derived key changed", "no audit key", "token lost", "empty audit key", "no data"],
)  # fmt: skip
def test_control_secret_values(
    live: dict[str, Any] | None,
    want_audit: str | None,
    expected: objects.ControlSecretValues | None,
) -> None:
    assert objects.control_secret_values(live, want_audit) == expected


USER, PASSWORD = manifests.REDIS_AUTH_KEYS


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (None, "does not exist"),
        ({"data": {}}, f"has no {USER} or {PASSWORD}"),
        ({"data": {USER: b64("u")}}, f"has no {PASSWORD} for"),
        ({"data": {USER: b64("u"), PASSWORD: ""}}, f"has no {PASSWORD} for"),
        ({"data": {USER: b64("u"), PASSWORD: b64("p")}}, None),
    ],
    ids=["missing", "empty", "no password", "blank password", "complete"],
)
def test_redis_source_problem(source: dict[str, Any] | None, problem: str | None) -> None:
    got = objects.redis_source_problem("ops/redis", source)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got and "ops/redis" in got


def test_secret_in_sync() -> None:
    desired = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"u": "x"}}
    assert objects.secret_in_sync(desired, copy.deepcopy(desired))
    assert not objects.secret_in_sync(desired, {**desired, "data": {"u": "y"}})


REVOKED = {"metadata": {"name": "cm"}, "data": {"license.json": "revoked", "extra": "1"}}
OWNED = {"uid": "u", "controller": True}


@pytest.mark.parametrize(
    ("live", "patch"),
    [
        (None, None),
        ({"metadata": {}, "data": {"license.json": "granted"}}, None),
        ({**_refs(OWNED), "data": REVOKED["data"]}, None),
        (
            {**_refs(OWNED), "data": {"license.json": "granted", "old": "x"}},
            {"data": {"license.json": "revoked", "extra": "1", "old": None}},
        ),
        ({**_refs(OWNED)}, {"data": {"license.json": "revoked", "extra": "1"}}),
    ],
    ids=["missing", "not ours", "already revoked", "granted", "no data"],
)
def test_revoked_config_patch(live: dict[str, Any] | None, patch: dict[str, Any] | None) -> None:
    assert objects.revoked_config_patch(live, REVOKED, "u") == patch


# --- readiness ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dep", "expected"),
    [
        (None, WorkloadState(exists=False, desired=3)),
        ({}, WorkloadState(exists=True, desired=0, observed_current=True)),
        (
            {
                "metadata": {"generation": 4},
                "spec": {"replicas": 2},
                "status": {
                    "observedGeneration": 4,
                    "replicas": 2,
                    "updatedReplicas": 2,
                    "readyReplicas": 1,
                    "availableReplicas": 1,
                },
            },
            WorkloadState(True, 2, True, 2, 2, 1, 1, False),
        ),
        (
            {"metadata": {"generation": 5}, "spec": {"replicas": 1},
             "status": {"observedGeneration": 4}},
            WorkloadState(exists=True, desired=1, observed_current=False),
        ),
        (
            {"spec": {"replicas": 1}, "status": {"conditions": [
                {"type": "Progressing", "status": "False",
                 "reason": "ProgressDeadlineExceeded"}]}},
            WorkloadState(exists=True, desired=1, observed_current=True, deadline_exceeded=True),
        ),
        (
            {"spec": {"replicas": 1}, "status": {"conditions": [
                {"type": "Progressing", "status": "True",
                 "reason": "ProgressDeadlineExceeded"}]}},
            WorkloadState(exists=True, desired=1, observed_current=True),
        ),
    ],
    ids=["missing: the rendered count", "bare", "rolling", "not observed yet", "deadline",
         "progressing again"],
)  # fmt: skip
def test_workload_state(dep: dict[str, Any] | None, expected: WorkloadState) -> None:
    assert readiness.workload_state(dep, 3) == expected


def pod(
    name: str,
    version: str = "2",
    digest: str = DIGEST,
    deleting: bool = False,
    unsealer: dict[str, Any] | None = None,
    ready: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {LABEL_VERSION: version},
        "annotations": {ANNOTATION_DIGEST: digest},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-06-01T00:00:00Z"
    status: dict[str, Any] = {}
    if unsealer is not None:
        status["initContainerStatuses"] = [{"name": "unsealer", **unsealer}]
    if ready:
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    return {"metadata": meta, "status": status}


FAILED = {"state": {"terminated": {"exitCode": 3, "message": "digest mismatch"}}}
FAILED_BEFORE = {
    "state": {"waiting": {}},
    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
}
STARTED = {"started": True}
RUNNING = WorkloadState(exists=True, desired=1)
STOPPED = WorkloadState(exists=True, desired=0)


@pytest.mark.parametrize(
    ("pods", "workload", "status", "reason", "part"),
    [
        ([], STOPPED, "Unknown", "NotRunning", "no Pods of version 2"),
        ([], RUNNING, "Unknown", "Pending", "waiting for an unsealer of version 2"),
        ([pod("p", unsealer={})], RUNNING, "Unknown", "Pending", "waiting"),
        ([pod("p", unsealer=FAILED)], RUNNING, "False", "UnsealFailed",
         "unsealer in Pod p failed (exit 3): digest mismatch"),
        ([pod("p", unsealer=FAILED_BEFORE)], RUNNING, "False", "UnsealFailed", "(exit 1): Error"),
        ([pod("p", unsealer=STARTED)], RUNNING, "True", "Verified", "(Pod p)"),
        ([pod("p", ready=True)], RUNNING, "True", "Verified", "(Pod p)"),
        ([pod("p", unsealer=FAILED), pod("q", ready=True)], RUNNING, "True", "Verified",
         "(Pod q)"),
        ([pod("p", version="1", ready=True)], RUNNING, "Unknown", "Pending", "waiting"),
        ([pod("p", digest="sha256tree:" + "ab" * 32, ready=True)], RUNNING, "Unknown",
         "Pending", "waiting"),
        ([pod("p", deleting=True, unsealer=FAILED)], STOPPED, "Unknown", "NotRunning", "no Pods"),
    ],
    ids=["stopped", "starting", "unsealing", "failed", "failed before", "started", "ready",
         "one of two verified", "old version", "old bundle", "going away"],
)  # fmt: skip
def test_artifact_state(
    pods: list[dict[str, Any]], workload: WorkloadState, status: str, reason: str, part: str
) -> None:
    got = readiness.artifact_state(model(), pods, workload)
    assert (got.status, got.reason) == (status, reason)
    assert part in got.message


def test_unsealer_failure_keeps_the_tail_of_the_message() -> None:
    long = {"state": {"terminated": {"exitCode": 2, "message": "x" * 1000 + "END"}}}
    failure = readiness.unsealer_failure(pod("p", unsealer=long))
    assert failure is not None and failure.endswith("END")
    assert len(failure) < readiness.FAILURE_TAIL + 100


# --- reporting ------------------------------------------------------------------------------
def test_ref_from_meta_or_mapping() -> None:
    meta = ObjectMeta("team-a", "digits", "u", 1, None, False)
    want = {
        "apiVersion": API_VERSION,
        "kind": "ProtectedModel",
        "namespace": "team-a",
        "name": "digits",
        "uid": "u",
    }
    assert reporting.ref("ProtectedModel", meta) == want
    assert (
        reporting.ref("ProtectedModel", {"namespace": "team-a", "name": "digits", "uid": "u"})
        == want
    )
    assert reporting.ref("ProtectedModel", {})["name"] == ""


def test_event_body() -> None:
    involved = {"namespace": "team-a", "name": "digits", "kind": "ProtectedModel"}
    event = reporting.event_body(involved, "Warning", "Drift", "m" * 2000, NOW)
    assert event["metadata"]["generateName"] == "digits."
    assert event["metadata"]["namespace"] == "team-a"
    assert event["involvedObject"] == involved
    assert (event["type"], event["reason"]) == ("Warning", "Drift")
    assert len(event["message"]) == reporting.MESSAGE_LIMIT
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-06-01T12:00:00Z"
    assert event["reportingComponent"] == reporting.COMPONENT


def c(type_: str, status: str, reason: str = "R", message: str = "m") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("before", "after", "told"),
    [
        (None, [c("Ready", "True")], [("Ready", "Normal")]),
        ([c("Ready", "True")], [c("Ready", "True")], []),
        ([c("Ready", "True")], [c("Ready", "True", reason="Other")], [("Ready", "Normal")]),
        ([c("Ready", "True")], [c("Ready", "False")], [("Ready", "Warning")]),
        (None, [c("Degraded", "True")], [("Degraded", "Warning")]),
        (None, [c("Degraded", "False")], [("Degraded", "Normal")]),
        (None, [c("Progressing", "True")], []),
        (None, [c("LicenseValid", "False"), c("KeyAccessible", "True")],
         [("LicenseValid", "Warning"), ("KeyAccessible", "Normal")]),
    ],
    ids=["new", "unchanged", "reason changed", "lost", "degraded", "recovered",
         "progressing is not told", "in order"],
)  # fmt: skip
def test_model_transitions(
    before: list[dict[str, Any]] | None,
    after: list[dict[str, Any]],
    told: list[tuple[str, str]],
) -> None:
    got = reporting.model_transitions(before, after)
    assert [(t.type, t.event_type) for t in got] == told


@pytest.mark.parametrize(
    ("before", "after", "announced"),
    [
        # a new model coming up: no first "fine" and no first "not yet" is an Event
        ([], [c("LicenseValid", "True"), c("KeyAccessible", "True"), c("Degraded", "False"),
              c("ArtifactVerified", "Unknown"), c("Ready", "False", "RollingOut")], []),
        # then what changed is
        ([c("Ready", "False", "RollingOut"), c("ArtifactVerified", "Unknown")],
         [c("Ready", "True", "Serving"), c("ArtifactVerified", "True", "Verified")],
         [("Ready", "Normal"), ("ArtifactVerified", "Normal")]),
        # a first value that is a problem is told, as a Warning
        (None, [c("LicenseValid", "False", "Expired"), c("KeyAccessible", "False"),
                c("Degraded", "True"), c("ArtifactVerified", "False"),
                c("Ready", "False", "ObjectConflict")],
         [("LicenseValid", "Warning"), ("KeyAccessible", "Warning"), ("Degraded", "Warning"),
          ("ArtifactVerified", "Warning"), ("Ready", "Warning")]),
        (None, [c("Ready", "False", "Reconciling")], []),
        (None, [c("Ready", "False", "ScalingDown")], []),
        # a change to "not yet" is told (it was known before)
        ([c("ArtifactVerified", "True")], [c("ArtifactVerified", "Unknown")],
         [("ArtifactVerified", "Warning")]),
        ([c("Degraded", "True")], [c("Degraded", "False")], [("Degraded", "Normal")]),
    ],
    ids=["healthy creation", "serving", "bad first values", "reconciling", "scaling down",
         "back to unknown", "recovered"],
)  # fmt: skip
def test_which_transitions_become_events(
    before: list[dict[str, Any]] | None,
    after: list[dict[str, Any]],
    announced: list[tuple[str, str]],
) -> None:
    got = reporting.model_transitions(before, after)
    assert [(t.type, t.event_type) for t in got if t.announced] == announced
    # every change is still returned (the audit record of a license decision, the log)
    assert len(got) == len(after)


def test_problem_is_bad_news_but_not_waiting() -> None:
    [unknown] = reporting.model_transitions(None, [c("ArtifactVerified", "Unknown")])
    [lost] = reporting.model_transitions(None, [c("Ready", "False")])
    [degraded_unknown] = reporting.model_transitions(None, [c("Degraded", "Unknown")])
    assert not unknown.problem and lost.problem and not degraded_unknown.problem


def test_license_transitions_tell_only_valid() -> None:
    got = reporting.license_transitions(
        [c("Valid", "True")], [c("Valid", "False", "Expired", "gone"), c("Other", "False")]
    )
    assert [(t.type, t.status, t.reason, t.message, t.good) for t in got] == [
        ("Valid", "False", "Expired", "gone", False)
    ]


def test_condition_counts_cover_every_pair() -> None:
    models = [
        reporting.condition_values({"conditions": [c("Ready", "True"), c("Degraded", "False")]}),
        reporting.condition_values({"conditions": [c("Ready", "False")]}),
        reporting.condition_values({}),
    ]
    counts = reporting.condition_counts(models)
    assert len(counts) == len(MODEL_CONDITIONS) * 3
    assert counts[("Ready", "True")] == counts[("Ready", "False")] == 1
    assert counts[("Degraded", "False")] == 1
    assert counts[("KeyAccessible", "Unknown")] == 0
    assert sum(counts.values()) == 3


def test_counts_kept_as_models_change_equal_a_recount() -> None:
    """What the operator keeps up to date model by model (`count_in`) is what counting
    every model again gives."""
    history = [
        ("a", {"Ready": "False", "Degraded": "False"}),
        ("b", {"Ready": "False"}),
        ("a", {"Ready": "True", "Degraded": "False"}),
        ("b", {"Ready": "True", "KeyAccessible": "True"}),
        ("a", None),  # forgotten
    ]
    counts = reporting.condition_counts(())
    now: dict[str, dict[str, str]] = {}
    for key, conds in history:
        if key in now:
            reporting.count_in(counts, now.pop(key), -1)
        if conds is not None:
            now[key] = conds
            assert reporting.count_in(counts, conds, 1) == list(conds.items())
        assert counts == reporting.condition_counts(now.values())
