"""A pass woken by an event does not read Vault again when the model's access is what
the operator last found or made there (`controller/vaultstep.py`); the periodic resync
reads it, and puts back a role deleted behind the operator's back. The operator's resync
is 40 s apart here, its first 30 s after its start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration.operator_helpers import Operator, OpsEnv, wait_for
from tests.integration.test_operator import (
    NO_QUOTAS,
    apply,
    license_doc,
    model_doc,
    vault_name,
    wait_reason,
)

KEY_CHECKS = 'modelseal_operator_vault_call_duration_seconds_count{op="key_check"}'
PROVISIONS = 'modelseal_operator_vault_call_duration_seconds_count{op="provision"}'
RECONCILES = 'modelseal_operator_reconciles_total{kind="ProtectedModel",result="ok"}'
RESYNCS = 'modelseal_operator_wakeups_total{source="resync"}'


@pytest.fixture
def vault_op(ops_env: OpsEnv) -> Iterator[Operator]:
    op = Operator(ops_env, resync_interval_s=40).start()
    try:
        yield op
    finally:
        op.stop()


def test_event_passes_skip_vault_and_the_resync_reads_it(
    ops_env: OpsEnv, vault_op: Operator
) -> None:
    env = ops_env
    ns = env.namespace("vreads")
    try:
        key = env.vault.create_transit_key()
        apply(env, license_doc(ns, quotas=NO_QUOTAS))
        apply(env, model_doc(ns, "digits", key))
        wait_reason(env, ns, "digits", "Serving", timeout=120)

        # A pass woken by an event (the Deployment scaled behind the operator's back) reads
        # nothing in Vault: the model's access is as the last pass left it. A window with
        # a periodic resync in it (which does read Vault) is measured again.
        for attempt in range(1, 4):
            before = vault_op.metrics()
            env.kubectl("scale", "deployment/digits", "-n", ns, "--replicas=3")
            wait_for(
                lambda: (env.raw("Deployment", ns, "digits") or {})["spec"]["replicas"] == 1,
                "replicas put back",
                30,
            )
            wait_for(
                lambda b=before: vault_op.metrics()[RECONCILES] > b[RECONCILES],
                "the pass that put them back ended",
                30,
            )
            after = vault_op.metrics()
            if after.get(RESYNCS, 0) != before.get(RESYNCS, 0) and attempt < 3:
                continue
            assert after.get(RESYNCS, 0) == before.get(RESYNCS, 0), "a resync in every window"
            assert after[KEY_CHECKS] == before[KEY_CHECKS]
            assert after[PROVISIONS] == before[PROVISIONS]
            break
        checks = after[KEY_CHECKS]

        # The role deleted in Vault: the periodic resync reads Vault and puts it back.
        env.vault.client().adapter.delete(f"/v1/auth/kubernetes/role/{vault_name(ns, 'digits')}")
        wait_for(
            lambda: env.vault_role(vault_name(ns, "digits")) is not None,
            "Vault role restored by the resync",
            90,
        )
        m = vault_op.metrics()
        assert m.get(RESYNCS, 0) >= 1 and m[KEY_CHECKS] > checks
        wait_reason(env, ns, "digits", "Serving", timeout=60)
    finally:
        env.drop_namespaces()
