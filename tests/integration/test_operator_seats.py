"""Seats move between a license's models without any change to the license: an older
model that grows takes the seat of a newer one, which stops serving; when it shrinks
again, the newer one serves again. The operator's periodic resync is set far beyond the
test (600 s, its first run waited out), so only the license's own reconcile can notice
(`licensing.seats_moved`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration.operator_helpers import Operator, OpsEnv, condition, wait_for
from tests.integration.test_operator import (
    NO_QUOTAS,
    apply,
    license_doc,
    model_doc,
    vault_name,
    wait_reason,
)


@pytest.fixture
def seats_op(ops_env: OpsEnv) -> Iterator[Operator]:
    op = Operator(ops_env, resync_interval_s=600).start()
    try:
        yield op
    finally:
        op.stop()


def test_an_older_model_that_grows_takes_the_seat_of_a_newer_one(
    ops_env: OpsEnv, seats_op: Operator
) -> None:
    env = ops_env
    ns = env.namespace("seats")
    try:
        key = env.vault.create_transit_key()
        apply(env, license_doc(ns, quotas=NO_QUOTAS, seats={"maxReplicas": 3, "maxGPUs": 2}))
        apply(env, model_doc(ns, "older", key))
        wait_reason(env, ns, "older", "Serving", timeout=120)
        apply(env, model_doc(ns, "newer", key))
        wait_reason(env, ns, "newer", "Serving", timeout=120)

        # The operator's first periodic resync (30 s after its start) is over before the
        # seats move, so that only the license's reconcile can move them (the next one is
        # 600 s away).
        resyncs = 'modelseal_operator_wakeups_total{source="resync"}'
        wait_for(lambda: seats_op.metrics().get(resyncs, 0) >= 2, "the first resync", 90)
        wait_for(
            lambda: seats_op.metrics().get("modelseal_operator_queue_depth") == 0,
            "the first resync drained",
            60,
        )
        resynced = seats_op.metrics()[resyncs]
        # The license's reconcile counts the models it wakes because seats moved (before,
        # a pass that woke them for another reason decided them, some seconds later).
        seats = 'modelseal_operator_wakeups_total{source="seats"}'
        woken = seats_op.metrics().get(seats, 0)

        # The older one grows to both GPUs: the newer one loses its seat (not the older).
        apply(env, model_doc(ns, "older", key, serving={"replicas": 1, "gpusPerReplica": 2}))
        pm = wait_reason(env, ns, "newer", "SeatsExceeded", timeout=60)
        assert (
            "older models already hold 1 replicas and 2 GPUs" in condition(pm, "Ready")["message"]
        )
        wait_for(
            lambda: env.vault_role(vault_name(ns, "newer")) is None, "newer's Vault role gone", 30
        )
        older = env.get_pm(ns, "older")
        assert condition(older, "LicenseValid")["status"] == "True"
        deployment = env.raw("Deployment", ns, "newer")
        assert deployment is not None and deployment["spec"]["replicas"] == 0
        assert seats_op.metrics().get(seats, 0) >= woken + 1
        woken = seats_op.metrics()[seats]

        # It shrinks again: the newer one gets its seat back.
        apply(env, model_doc(ns, "older", key))
        wait_reason(env, ns, "newer", "Serving", timeout=120)
        assert env.vault_role(vault_name(ns, "newer")) is not None
        assert seats_op.metrics()[resyncs] == resynced  # no resync did it
        assert seats_op.metrics()[seats] >= woken + 1
    finally:
        env.drop_namespaces()
