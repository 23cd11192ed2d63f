"""The operator renders every model's audit checkpoint key (issue 12, Medium 8).

Real API server and Vault: the operator, given the platform's audit key as a file (as the
chart mounts it), writes the model's derived key into ``<model>-triton-control``; the file
the kubelet would lay out from the gateway's rendered volume signs checkpoints that
``modelseal audit verify --key-file <platform key> --model ns/name`` accepts; an edited
key is put back; the operator's own log is signed with the platform key.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from tests.fixtures.redis_acl import mount_secret_volume, remap
from tests.integration.operator_helpers import Operator, OpsEnv, wait_for
from tests.integration.test_operator import apply, license_doc, model_doc

from modelseal.audit.chain import Chain
from modelseal.audit.keyfile import model_audit_key, read_hmac_key
from modelseal.audit.verify import verify_file
from modelseal.render import manifests

pytestmark = pytest.mark.integration


def test_models_get_a_derived_key_as_a_file(ops_env: OpsEnv, tmp_path: Path) -> None:
    env = ops_env
    platform = tmp_path / "platform.key"
    platform.write_text(secrets.token_urlsafe(48) + "\n")
    op = Operator(env, resync_interval_s=3, audit_hmac_key_file=str(platform)).start()
    ns = env.namespace("auditkey")
    try:
        apply(env, license_doc(ns))
        apply(env, model_doc(ns, "signed", env.vault.create_transit_key()))
        name = "signed-triton-control"
        want = model_audit_key(read_hmac_key(platform), ns, "signed")

        def keyed() -> dict[str, str] | None:
            data = (env.raw("Secret", ns, name) or {}).get("data") or {}
            return data if manifests.AUDIT_KEY_KEY in data else None

        data = wait_for(keyed, f"{name} with the audit key", 60)
        assert base64.b64decode(data[manifests.AUDIT_KEY_KEY]) == want
        assert data[manifests.CONTROL_TOKEN_KEY]
        dep = wait_for(lambda: env.raw("Deployment", ns, "signed"), "Deployment signed", 60)
        pod = dep["spec"]["template"]["spec"]
        gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
        gw_env = {e["name"]: e.get("value") for e in gateway["env"]}
        secret = env.raw("Secret", ns, name)
        assert secret is not None
        mounts = mount_secret_volume(gateway, pod["volumes"], {name: secret}, tmp_path / "kubelet")
        key_file = remap(gw_env["MODELSEAL_AUDIT_HMAC_KEY_FILE"], mounts)
        # The gateway's checkpoints with that file verify with the platform key and --model.
        chain = Chain("signed-pod", read_hmac_key(key_file), checkpoint_every=2)
        log = tmp_path / "gateway.jsonl"
        lines = [chain.genesis()]
        for i in range(3):
            lines += chain.seal({"type": "request", "i": i})
        lines.append(chain.checkpoint("shutdown"))
        log.write_bytes(b"".join(lines))
        cli = [sys.executable, "-m", "modelseal", "audit", "verify", str(log)]
        ok = subprocess.run(
            [*cli, "--key-file", str(platform), "--model", f"{ns}/signed", "--require-seal"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert ok.returncode == 0 and "2 signatures verified" in ok.stdout, ok.stdout + ok.stderr
        other = subprocess.run(
            [*cli, "--key-file", str(platform), "--model", f"{ns}/other"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert other.returncode == 1  # another model's key does not verify it
        # The key's value is in no Deployment field and no operator log line.
        assert want.decode() not in str(dep) + op.log_path.read_text(errors="replace")

        # An edited key is put back on the next resync (the token is kept).
        token = data[manifests.CONTROL_TOKEN_KEY]
        forged = base64.b64encode(b"f" * 64).decode()
        env.core().patch_namespaced_secret(name, ns, {"data": {manifests.AUDIT_KEY_KEY: forged}})

        def restored() -> bool:
            now = keyed() or {}
            return (
                base64.b64decode(now.get(manifests.AUDIT_KEY_KEY, "")) == want
                and now.get(manifests.CONTROL_TOKEN_KEY) == token
            )

        wait_for(restored, f"{name} audit key put back", 30)
    finally:
        op.stop()
    res = verify_file(op.audit_file, read_hmac_key(platform), require_seal=True)
    assert res.ok and res.signed_checkpoints >= 1, res.summary()
