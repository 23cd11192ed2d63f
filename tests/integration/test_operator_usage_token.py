"""The model reconcile copies the usage export token into the model's namespace (issue 14).

Real API server and Vault: the operator, told where the platform keeps the token (as the
chart tells it) and with the usage writer's round far away (so only the reconcile can make
it), reports a missing source on the model (Degraded, naming the Secret), then copies the
token into ``<model>-usage-export`` (owned by the model, the one key) once the source exists.
The token is in no Deployment, ConfigMap or operator log line.
"""

from __future__ import annotations

import base64
import json
import secrets

import pytest
from tests.integration.operator_helpers import OPERATOR_NS, Operator, OpsEnv, condition, wait_for
from tests.integration.test_operator import apply, license_doc, model_doc, wait_reason

pytestmark = pytest.mark.integration

SOURCE = "modelseal-usage-export"


def test_reconcile_copies_the_usage_export_token(ops_env: OpsEnv) -> None:
    env = ops_env
    token = secrets.token_urlsafe(32)
    op = Operator(
        env,
        resync_interval_s=3,
        usage_status_interval_s=3600,  # the usage writer's copy is not what is tested
        usage_export_url="http://127.0.0.1:9/usage",
        usage_export_token_secret=SOURCE,
        usage_export_token_secret_namespace=OPERATOR_NS,
    ).start()
    ns = env.namespace("usagetok")
    try:
        key = env.vault.create_transit_key()
        apply(env, license_doc(ns))
        apply(env, model_doc(ns, "billed", key))
        degraded = wait_reason(env, ns, "billed", "ReconcileError", ctype="Degraded")
        assert f"{OPERATOR_NS}/{SOURCE}" in condition(degraded, "Degraded")["message"]
        assert env.raw("Secret", ns, "billed-usage-export") is None

        encoded = base64.b64encode(token.encode()).decode()
        env.core().create_namespaced_secret(
            OPERATOR_NS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SOURCE, "namespace": OPERATOR_NS},
                "data": {"token": encoded},
            },
        )
        copy = wait_for(
            lambda: env.raw("Secret", ns, "billed-usage-export"), "billed-usage-export", 60
        )
        pm = env.get_pm(ns, "billed")
        assert pm is not None
        (owner,) = copy["metadata"]["ownerReferences"]
        assert owner["uid"] == pm["metadata"]["uid"] and owner["controller"] is True
        assert copy["data"] == {"token": encoded}

        dep = wait_for(lambda: env.raw("Deployment", ns, "billed"), "Deployment billed", 60)
        configmaps = env.core().list_namespaced_config_map(ns).items
        exposed = json.dumps(dep) + json.dumps([cm.data for cm in configmaps])
        exposed += op.log_path.read_text(errors="replace")
        assert token not in exposed and encoded not in exposed
    finally:
        env.drop_namespaces()
        try:
            wait_for(lambda: env.get_pm(ns, "billed") is None, "model deleted", 60)
        finally:
            op.stop()
            if env.raw("Secret", OPERATOR_NS, SOURCE) is not None:
                env.core().delete_namespaced_secret(SOURCE, OPERATOR_NS)
