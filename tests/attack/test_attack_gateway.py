"""Attacks on the gateway as a tenant (or anyone who reaches its port) would make them:
hostile text in the fields that end up in audit records, random model names and random
keys in floods. Each runs a real gateway process in front of the real Triton test server
and passes only when the gateway handled the attack safely (issue 12: High 1, 2, 5, 6, 15).
The last attack is on the ``modelseal`` CLI with a tampered bundle and the real Vault
(High 14)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import hvac
import numpy as np
import pytest
import redis as redis_py
import tritonclient.grpc as grpcclient
from bench.gateway.harness import (
    GatewayProcess,
    call,
    digits_body,
    license_doc,
    write_keys,
    write_license,
)
from redis.backoff import NoBackoff
from redis.retry import Retry
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from modelseal.gateway.keys import hash_key_scrypt, hash_key_sha256, new_api_key
from modelseal.gateway.upstream import GRPC_SERVICE
from modelseal_devenv.triton import TritonServer
from modelseal_devenv.vault import VaultServer
from tests.attack.conftest import AttackLedger
from tests.fixtures.redis_acl import acl_redis, chart_acl
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

KEY = "attack-gateway-key-0123456789abcdef"
TENANT = "atk"
LONE = chr(0xD800)  # json.dumps writes it as the escape \ud800, which json.loads accepts


def _healthz(gw: GatewayProcess) -> int:
    try:
        with urllib.request.urlopen(gw.metrics_url + "/healthz", timeout=10) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _verify(gw: GatewayProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "modelseal",
            "audit",
            "verify",
            str(gw.audit_file),
            "--key-file",
            str(gw.hmac_key_file),
            "--strict",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def gateway(tmp_path: Path, triton_server: TritonServer) -> Iterator[GatewayProcess]:
    write_license(tmp_path / "license.json", license_doc(TENANT, ["digits"]))
    write_keys(tmp_path / "keys.json", {"alice": (TENANT, KEY)})
    gw = GatewayProcess(
        tmp_path,
        triton_http_url=triton_server.http_url,
        triton_grpc_url=triton_server.grpc_url,
        # a small queue: a writer that died would block every request after 8
        env={"MODELSEAL_AUDIT_QUEUE_SIZE": "8", "MODELSEAL_AUDIT_CHECKPOINT_EVERY": "10"},
    ).start()
    try:
        yield gw
    finally:
        gw.stop()


def _hostile_requests(gw: GatewayProcess) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(what, url, body, headers): every request field that reaches an audit record, with
    a lone surrogate (valid JSON, not encodable as UTF-8) or bytes that do not decode."""
    infer = f"{gw.http_url}/v2/models/digits/infer"
    good = json.loads(digits_body())
    surrogate_id = digits_body()[:-1] + b',"id":"\\ud800"}'
    params = dict(good, parameters={LONE: chr(0xDFFF)})
    bad_input = {
        "id": chr(0xDBFF) + chr(0xDFFF) + LONE,
        "inputs": [dict(good["inputs"][0], name=LONE)],
    }
    bad_output = dict(good, outputs=[{"name": chr(0xDC00)}])
    return [
        ("licensed request, id a lone surrogate", infer, surrogate_id, {}),
        (
            "versioned, id a lone surrogate",
            infer.replace("/infer", "/versions/1/infer"),
            surrogate_id,
            {},
        ),
        ("parameters with surrogates", infer, json.dumps(params).encode(), {}),
        ("input named by a surrogate", infer, json.dumps(bad_input).encode(), {}),
        ("output named by a surrogate", infer, json.dumps(bad_output).encode(), {}),
        (
            "model name of undecodable bytes",
            f"{gw.http_url}/v2/models/%ED%A0%80/infer",
            surrogate_id,
            {},
        ),
        (
            "version of undecodable bytes",
            f"{gw.http_url}/v2/models/digits/versions/%ff/infer",
            surrogate_id,
            {},
        ),
        ("unknown path of undecodable bytes", f"{gw.http_url}/v2/%ED%A0%80%ff/x", b"{}", {}),
        ("request id header", infer, surrogate_id, {"X-Request-ID": "id-\xff"}),
        ("binary header length", infer, surrogate_id, {"Inference-Header-Content-Length": "x"}),
    ]


def test_hostile_text_in_audited_fields_keeps_the_audit_trail(
    gateway: GatewayProcess, attack_ledger: AttackLedger
) -> None:
    """High 1: a licensed request with JSON ``"id":"\\ud800"`` (and the same in every other
    audited field) is served or refused, its record is written and verifies, and the
    gateway keeps serving and writing records for the requests after it."""
    gw = gateway
    sent: list[tuple[str, int]] = []
    for what, url, body, headers in _hostile_requests(gw):
        try:
            status = call(url, body, KEY, headers=headers)[0]
        except (TimeoutError, urllib.error.URLError, ConnectionError):
            status = -1  # hung or dropped: counted below as lost
        sent.append((what, status))
    # more than the queue holds: with a dead writer these would hang
    url = f"{gw.http_url}/v2/models/digits/infer"
    for i in range(20):
        try:
            status = call(url, digits_body(), KEY)[0]
        except (TimeoutError, urllib.error.URLError, ConnectionError):
            status = -1
        sent.append((f"plain request {i}", status))
    assert _healthz(gw) == 200
    served = sum(1 for _, status in sent if status > 0)
    gw.stop()  # the shutdown checkpoint covers the tail

    lines = gw.audit_lines()
    records = [r for r in lines if r["type"] == "request"]
    lost = len(sent) - len(records)
    attack_ledger.record_lost(max(0, lost) + (len(sent) - served))
    assert served == len(sent), [s for s in sent if s[1] < 0]
    assert lost == 0, (sent, records[-3:])
    assert [r["status"] for r in records] == [status for _, status in sent]
    # refused before the quota counts them (Triton cannot parse them either), and answered
    hostile = sent[:-20]
    assert all(status in (400, 404) for _, status in hostile), hostile
    assert all(status == 200 for _, status in sent[-20:])
    assert records[0]["request_id"] == "\\ud800"  # written, escaped, still findable
    assert not any(r.get("event") == "audit_record_unwritable" for r in lines)
    result = _verify(gw)
    assert result.returncode == 0, result.stdout + result.stderr


def _series(metrics_text: str) -> set[str]:
    """The gateway's metric series (one per sample line, labels included)."""
    return {
        line.rpartition(" ")[0]
        for line in metrics_text.splitlines()
        if line.startswith("modelseal_gateway_")
    }


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def _flood(
    urls: list[tuple[str, str]], headers: dict[str, str], concurrency: int, budget_s: float
) -> dict[int, int]:
    """Send each (method, url) once, ``concurrency`` at a time, until done or the time
    budget is spent (a slow machine sends fewer); returns the count of each status."""
    counts: dict[int, int] = {}
    queue = iter(urls)
    deadline = time.monotonic() + budget_s
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            for method, url in queue:
                if time.monotonic() > deadline:
                    return
                async with session.request(method, url, data=b"{}", headers=headers) as r:
                    await r.read()
                    counts[r.status] = counts.get(r.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


async def _grpc_flood(target: str, names: list[str], concurrency: int) -> dict[str, int]:
    """Keyless gRPC ModelInfer calls naming each model once; the count of each status."""
    counts: dict[str, int] = {}
    queue = iter(names)
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(f"/{GRPC_SERVICE}/ModelInfer")

        async def worker() -> None:
            for name in queue:
                try:
                    await infer(pb.ModelInferRequest(model_name=name).SerializeToString())
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                counts[code] = counts.get(code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def test_random_model_names_do_not_grow_metrics(gateway: GatewayProcess) -> None:
    """High 5: keyless requests (HTTP and gRPC) naming random models (each a valid model
    name) are refused with 401, and the /metrics series stay the same set: the name of a
    model no license names is counted as ``unknown``, never as a label of its own."""
    gw = gateway
    base = gw.http_url

    def names(n: int) -> list[tuple[str, str]]:
        out = []
        for i in range(n):
            name = "m" + secrets.token_hex(8)
            if i % 4 == 3:
                out.append(("GET", f"{base}/v2/models/{name}"))
            else:
                out.append(("POST", f"{base}/v2/models/{name}/infer"))
        return out

    def grpc_names(n: int) -> list[str]:
        return ["g" + secrets.token_hex(8) for _ in range(n)]

    json_hdr = {"Content-Type": "application/json"}
    warm = asyncio.run(_flood(names(200), json_hdr, 8, 120))  # every bounded series exists
    grpc_warm = asyncio.run(_grpc_flood(gw.grpc_target, grpc_names(50), 4))
    assert set(warm) == {401} and set(grpc_warm) == {"UNAUTHENTICATED"}, (warm, grpc_warm)
    before = _series(gw.metrics())
    rss_before = _rss_kib(gw.pid)
    flood = names(20_000)
    counts = asyncio.run(_flood(flood, json_hdr, 32, 120))
    sent = sum(counts.values())
    grpc_flood = grpc_names(2_000)
    grpc_counts = asyncio.run(_grpc_flood(gw.grpc_target, grpc_flood, 16))
    after_text = gw.metrics()
    after = _series(after_text)
    rss_after = _rss_kib(gw.pid)
    print(
        f"random-name flood: http sent={sent} statuses={counts}, grpc statuses={grpc_counts}, "
        f"series {len(before)}->{len(after)} "
        f"rss_kib {rss_before}->{rss_after}"
    )
    assert sent >= 2_000, f"only {sent} requests sent in the time budget: the attack is too small"
    assert set(counts) == {401}, counts
    assert grpc_counts == {"UNAUTHENTICATED": len(grpc_flood)}, grpc_counts
    assert after - before == set(), sorted(after - before)[:10]
    sent_names = [url.split("/v2/models/")[1].split("/")[0] for _, url in flood[:sent]]
    sent_names += grpc_flood
    assert not any(name in after_text for name in sent_names)
    assert 'model="unknown"' in after_text
    assert gw.metric("modelseal_gateway_requests_total", model="unknown", code="401") >= sent


async def _probe_under_flood(
    gw: GatewayProcess, valid_keys: list[str], flood_keys: list[str], probes: int
) -> tuple[list[float], list[float], list[int], dict[int, int], int]:
    """Valid requests (one at a time, each key in turn) while idle, then while
    ``flood_keys`` are sent from many connections at once. Returns (idle latencies, flood
    latencies, statuses of the valid requests under flood, flood statuses, flood requests
    answered while the valid ones ran)."""
    url = f"{gw.http_url}/v2/models/digits/infer"
    body = digits_body()
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    flood_counts: dict[int, int] = {}
    answered = 0
    stop = asyncio.Event()
    started = asyncio.Event()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def valid(key: str) -> tuple[int, float]:
            hdr = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=hdr) as r:
                await r.read()
                return r.status, time.perf_counter() - t0

        async def flooder(keys: list[str]) -> None:
            nonlocal answered
            for key in keys:
                if stop.is_set():
                    return
                hdr = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                try:
                    async with session.post(url, data=body, headers=hdr) as r:
                        await r.read()
                        status = r.status
                except aiohttp.ClientError:
                    status = -1
                flood_counts[status] = flood_counts.get(status, 0) + 1
                answered += 1
                if answered >= 200:
                    started.set()

        for key in valid_keys:  # first use (a scrypt key is verified once, then remembered)
            assert (await valid(key))[0] == 200
        idle = [(await valid(valid_keys[i % len(valid_keys)]))[1] for i in range(probes)]
        n = 256  # connections flooding at once
        floods = [asyncio.create_task(flooder(flood_keys[i::n])) for i in range(n)]
        await started.wait()
        before = answered
        under = [await valid(valid_keys[i % len(valid_keys)]) for i in range(probes)]
        during = answered - before
        stop.set()
        await asyncio.gather(*floods)
    return idle, [t for _, t in under], [s for s, _ in under], flood_counts, during


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-scrypt-entry", "key-ids-only"])
def test_random_keys_do_not_block_valid_users(
    tmp_path: Path, triton_server: TritonServer, attack_ledger: AttackLedger, legacy: bool
) -> None:
    """High 6: thousands of concurrent requests with random keys, while the keys file holds
    a scrypt entry with a key id, and (``legacy``) one without (every unknown key must then
    be tried against it). The slow checks are bounded (refused with 503 beyond them, never
    queued), the audit slot is taken only after authentication, so sha256 and cached
    scrypt users are all served. Their latency under the flood, relative to idle, is
    reported (the scrypt threads of the legacy case compete for the same CPUs)."""
    kid, human = new_api_key()
    write_license(tmp_path / "license.json", license_doc(TENANT, ["digits"]))
    consumers = [
        {"id": "alice", "tenant": TENANT, "hash": hash_key_sha256(KEY)},
        {"id": "human", "tenant": TENANT, "key_id": kid, "hash": hash_key_scrypt(human)},
    ]
    if legacy:
        consumers.append(
            {"id": "old", "tenant": TENANT, "hash": hash_key_scrypt("an-older-secret-0123")}
        )
    (tmp_path / "keys.json").write_text(json.dumps({"consumers": consumers}))
    gw = GatewayProcess(
        tmp_path,
        triton_http_url=triton_server.http_url,
        triton_grpc_url=triton_server.grpc_url,
        # a queue smaller than the flood: were slots taken before authentication, valid
        # requests would wait behind random keys
        env={"MODELSEAL_AUDIT_QUEUE_SIZE": "64"},
    ).start()
    flood: list[str] = []
    for i in range(5_000):
        if i % 3 == 0:
            flood.append(secrets.token_urlsafe(32))  # no key id: tried against "old"
        elif i % 3 == 1:
            flood.append(new_api_key()[1])  # an id nobody has
        else:
            flood.append(f"{kid}.{secrets.token_urlsafe(32)}")  # human's id, a wrong secret
    try:
        idle, under, statuses, flood_counts, during = asyncio.run(
            _probe_under_flood(gw, [KEY, human], flood, probes=20)
        )
        busy = gw.metric("modelseal_gateway_requests_total", code="503")
    finally:
        gw.stop()
    idle_med = sorted(idle)[len(idle) // 2]
    under_med = sorted(under)[len(under) // 2]
    print(
        f"random-key flood (legacy={legacy}): flood statuses={flood_counts}, "
        f"answered during the probe={during}; "
        f"valid median latency idle={idle_med * 1000:.1f}ms under flood={under_med * 1000:.1f}ms "
        f"ratio={under_med / idle_med:.1f}"
    )
    assert statuses == [200] * len(statuses), statuses
    assert during > 0, "the flood had stopped before the valid requests ran"
    assert set(flood_counts) <= {401, 503}, flood_counts
    assert busy == flood_counts.get(503, 0)
    if not legacy:  # only keys naming human's id reach a KDF: a third of the flood at most
        assert flood_counts.get(401, 0) >= len(flood) // 2, flood_counts
    records = [r for r in gw.audit_lines() if r["type"] == "request"]
    served = [r for r in records if r["status"] == 200]
    sent_valid = 2 + 20 + 20
    attack_ledger.record_lost(max(0, sent_valid - len(served)))
    assert len(served) == sent_valid


# -- the CLI: a tampered bundle steering the owner's Vault token (High 14) ---------------


def _kv_entries(client: hvac.Client, mount: str, path: str) -> int:
    try:
        listed = client.secrets.kv.v1.list_secrets(path=path, mount_point=mount)
    except hvac.exceptions.InvalidPath:  # 404: nothing was ever written there
        return 0
    return len(listed["data"]["keys"])


def test_tampered_envelope_cannot_steer_the_owners_vault_token(
    tmp_path: Path,
    vault_server: VaultServer,
    transit_key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    attack_ledger: AttackLedger,
) -> None:
    """High 14: whoever can write a published bundle replaces the mount in its key
    envelope (read before anything is authenticated) with a KV engine's path. Were it
    used, ``verify``/``unseal``/``rewrap`` would POST the wrapped key with the owner's
    token to ``<kv>/decrypt/<key>``: a KV write the attacker can read. Each command must
    refuse the bundle, and the KV engine must stay empty."""
    from modelseal.cli.main import main as cli_main
    from modelseal.crypto import format as fmt
    from modelseal.vault import transit

    admin = vault_server.client()
    kv = f"drop-{secrets.token_hex(4)}"
    admin.sys.enable_secrets_engine(backend_type="kv", path=kv, options={"version": "1"})
    monkeypatch.setenv("VAULT_ADDR", vault_server.addr)
    monkeypatch.setenv("VAULT_TOKEN", vault_server.root_token)  # the owner's token
    monkeypatch.delenv("VAULT_TOKEN_FILE", raising=False)
    monkeypatch.delenv("VAULT_K8S_ROLE", raising=False)
    monkeypatch.delenv("MODELSEAL_VAULT_TRANSIT_MOUNT", raising=False)
    model = tmp_path / "model" / "identity" / "1"
    model.mkdir(parents=True)
    (model / "model.py").write_bytes(b"# weights\n" + secrets.token_bytes(5000))
    sealed = tmp_path / "model.mseal"
    seal = ["seal", str(tmp_path / "model"), "-o", str(sealed), "--transit-key", transit_key]
    assert cli_main([*seal, "--no-progress"]) == 0, capsys.readouterr().err
    capsys.readouterr()

    raw = sealed.read_bytes()
    with sealed.open("rb") as fh:
        header = fmt.read_header(fh)
    env = header.envelope
    evil = fmt.Envelope(env.key_name, env.key_version, env.wrapped_key, kv)
    _, head = fmt.with_envelope(header, evil)
    tampered = tmp_path / "tampered.mseal"
    tampered.write_bytes(head + raw[header.records_offset :])

    runs = {
        "verify": ["verify", str(tampered), "--no-progress"],
        "unseal": ["unseal", str(tampered), "--to", str(tmp_path / "out"), "--allow-non-tmpfs"],
        "rewrap": ["rewrap", str(tampered)],
    }
    codes = {}
    for name, argv in runs.items():
        codes[name] = cli_main([*argv, "--no-progress"] if name == "unseal" else argv)
        err = capsys.readouterr().err
        assert f"names Transit mount '{kv}'" in err, (name, err)
    written = _kv_entries(admin, kv, "decrypt")
    # control: what the CLI did before (the envelope's mount, the owner's token) does
    # write the wrapped key into a KV engine
    control = f"control-{secrets.token_hex(4)}"
    admin.sys.enable_secrets_engine(backend_type="kv", path=control, options={"version": "1"})
    with contextlib.suppress(Exception):  # the KV answer is no Transit answer
        transit.unwrap_data_key(admin, env.key_name, env.wrapped_key, control)
    assert _kv_entries(admin, control, "decrypt") == 1, "the attack itself no longer works"
    attack_ledger.record_leaked(written)
    assert codes == {"verify": 1, "unseal": 1, "rewrap": 1}
    assert written == 0
    assert not (tmp_path / "out").exists()
    # the untouched bundle still verifies through the configured mount
    assert cli_main(["verify", str(sealed), "--no-progress"]) == 0, capsys.readouterr().err


# -- the quota Redis: counters only for the gateway's credentials (High 2) ---------------


_NO_RETRY: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_timeout": 10}


def test_quota_redis_refuses_everyone_but_the_gateway(
    tmp_path: Path, triton_server: TritonServer, attack_ledger: AttackLedger
) -> None:
    """High 2: a pod that reaches Redis (labels copied) tries to reset its counters or
    exhaust others'. Redis runs with the chart's users (default user off; the gateway's
    user limited to its key prefix and commands); the gateway reads its user and password
    from files. Without them nothing is served; with them, FLUSHALL/DEL/KEYS/CONFIG are
    refused; the counters hold; the password is in no argument, environment or log."""
    password = secrets.token_urlsafe(24)
    admin_pw = secrets.token_urlsafe(24)
    # the chart's ACL file, and an admin user of the test's own to look at the counters
    acl = chart_acl(password) + f"user admin on >{admin_pw} ~* &* +@all\n"
    with acl_redis(tmp_path / "redis", acl) as port:
        host = "127.0.0.1"
        admin = redis_py.Redis(host=host, port=port, username="admin", password=admin_pw)
        url = f"redis://{host}:{port}/0"
        (tmp_path / "redis-user").write_text("modelseal\n")
        (tmp_path / "redis-password").write_text(password + "\n")
        (tmp_path / "redis-password").chmod(0o600)
        write_license(
            tmp_path / "license.json", license_doc(TENANT, ["digits"], quotas={"per_day": 5})
        )
        write_keys(tmp_path / "keys.json", {"alice": (TENANT, KEY)})
        gw = GatewayProcess(
            tmp_path,
            triton_http_url=triton_server.http_url,
            triton_grpc_url=triton_server.grpc_url,
            store="redis",
            redis_url=url,
            env={
                "MODELSEAL_REDIS_USERNAME_FILE": str(tmp_path / "redis-user"),
                "MODELSEAL_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"),
            },
        ).start()
        infer = f"{gw.http_url}/v2/models/digits/infer"
        try:
            statuses = [call(infer, digits_body(), KEY)[0] for _ in range(5)]
            counters = sorted(k.decode() for k in admin.scan_iter("modelseal:*"))
            proc = Path(f"/proc/{gw.pid}")
            exposed = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()

            attempts = {}
            anonymous = redis_py.Redis(host=host, port=port, protocol=2, **_NO_RETRY)
            for name, argv in (
                ("FLUSHALL", ("FLUSHALL",)),
                ("DEL", ("DEL", *counters)),
                ("SET", ("SET", counters[0], "0")),
            ):
                try:
                    anonymous.execute_command(*argv)
                    attempts[f"anonymous {name}"] = "done"
                except redis_py.exceptions.RedisError as exc:  # NOAUTH
                    attempts[f"anonymous {name}"] = type(exc).__name__
            for user, pw in (("default", ""), ("default", password), ("modelseal", "guess")):
                try:
                    anonymous.execute_command("AUTH", user, pw)
                    attempts[f"AUTH {user}"] = "done"
                except redis_py.exceptions.RedisError as exc:
                    attempts[f"AUTH {user}"] = type(exc).__name__
            anonymous.close()
            # even with the gateway's own credentials: nothing outside its scripts' needs
            stolen = redis_py.Redis(host=host, port=port, username="modelseal", password=password)
            for name, argv in (
                ("FLUSHALL", ("FLUSHALL",)),
                ("DEL", ("DEL", *counters)),
                ("KEYS", ("KEYS", "*")),
                ("CONFIG", ("CONFIG", "SET", "protected-mode", "no")),
                ("SET other prefix", ("SET", "other:x", "1")),
            ):
                try:
                    stolen.execute_command(*argv)
                    attempts[f"gateway user {name}"] = "done"
                except redis_py.exceptions.RedisError as exc:
                    attempts[f"gateway user {name}"] = type(exc).__name__
            stolen.close()
            after = [call(infer, digits_body(), KEY)[0] for _ in range(2)]
            # a gateway without the credentials (nothing mounted) is refused: fail closed
            bare = GatewayProcess(
                tmp_path / "bare",
                triton_http_url=triton_server.http_url,
                triton_grpc_url=triton_server.grpc_url,
                name="bare",
                store="redis",
                redis_url=url,
                license_file=tmp_path / "license.json",
                keys_file=tmp_path / "keys.json",
            ).start()
            try:
                bare_status = call(f"{bare.http_url}/v2/models/digits/infer", digits_body(), KEY)
            finally:
                bare.stop()
        finally:
            gw.stop()
            admin.close()
        log_text = gw.log_path.read_bytes()
    leaked = exposed.count(password.encode()) + log_text.count(password.encode())
    attack_ledger.record_leaked(leaked)
    assert statuses == [200] * 5 and after == [429, 429], (statuses, after)
    assert bare_status[0] == 503 and b"quota store unavailable" in bare_status[2]
    assert counters, "the gateway wrote no counter under its prefix"
    print(f"redis attempts: {attempts}")
    assert all(v != "done" for v in attempts.values()), attempts
    assert attempts["anonymous FLUSHALL"] == "AuthenticationError", attempts
    assert attempts["gateway user FLUSHALL"] == "NoPermissionError", attempts
    assert leaked == 0


# -- the concurrency limit against timeouts (High 15) ------------------------------------

_GATE_MODEL_PY = '''\
"""Gate model: OUTPUT = INPUT, once the file <release dir>/<token> exists (token = the
first input value); each execution appends its token to <release dir>/ran."""

import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.dir = params["release_dir"]["string_value"]

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            token = str(int(data.flat[0]))
            deadline = time.monotonic() + 120
            while not os.path.exists(os.path.join(self.dir, token)):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            with open(os.path.join(self.dir, "ran"), "a") as fh:
                fh.write(token + "\\n")
            out = pb_utils.Tensor("OUTPUT", data)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''

_GATE_CONFIG = """\
name: "gate"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT", data_type: TYPE_FP32, dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT", data_type: TYPE_FP32, dims: [ -1 ] }} ]
instance_group [ {{ count: 2, kind: KIND_CPU }} ]
parameters {{ key: "release_dir", value: {{ string_value: "{release_dir}" }} }}
"""


@pytest.fixture
def gate_model(
    triton_server: TritonServer, triton_model_repository: Path, tmp_path: Path
) -> Iterator[Path]:
    """The gate model loaded into the shared Triton; yields its release folder."""
    release = tmp_path / "release"
    release.mkdir()
    model = triton_model_repository / "gate"
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "1" / "model.py").write_text(_GATE_MODEL_PY)
    (model / "config.pbtxt").write_text(_GATE_CONFIG.format(release_dir=release))
    triton_server.load_model("gate")
    try:
        yield release
    finally:
        for token in range(100):  # let anything still waiting finish before unloading
            (release / str(token)).touch()
        triton_server.unload_model("gate")
        # The repository is shared by the whole session: leave it as it was, so that other
        # tests see only their own models in Triton's repository index.
        shutil.rmtree(model, ignore_errors=True)


def _gate_body(token: int) -> bytes:
    inp = {"name": "INPUT", "datatype": "FP32", "shape": [1], "data": [float(token)]}
    return json.dumps({"inputs": [inp]}).encode()


def test_a_timeout_does_not_free_the_concurrency_slot(
    tmp_path: Path, triton_server: TritonServer, gate_model: Path
) -> None:
    """High 15: with ``concurrent: 1``, a request that Triton is still computing when the
    gateway's upstream timeout answers 504 keeps its slot: the next request is refused
    (429) instead of starting a second computation, until Triton is done; over HTTP and
    gRPC. Each computation runs once."""
    release = gate_model
    gw_dir = tmp_path / "gw"
    write_license(gw_dir / "license.json", license_doc(TENANT, ["gate"], quotas={"concurrent": 1}))
    write_keys(gw_dir / "keys.json", {"alice": (TENANT, KEY)})
    gw = GatewayProcess(
        gw_dir,
        triton_http_url=triton_server.http_url,
        triton_grpc_url=triton_server.grpc_url,
        env={"MODELSEAL_GATEWAY_UPSTREAM_TIMEOUT_S": "1"},
    ).start()
    url = f"{gw.http_url}/v2/models/gate/infer"
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    headers = {"authorization": f"Bearer {KEY}"}

    def grpc_infer(token: int) -> str:
        inp = grpcclient.InferInput("INPUT", [1], "FP32")
        inp.set_data_from_numpy(np.array([float(token)], dtype=np.float32))
        try:
            client.infer("gate", [inp], headers=headers, client_timeout=60)
        except InferenceServerException as exc:
            return str(exc.status())
        return "OK"

    def ran() -> list[str]:
        path = release / "ran"
        return path.read_text().split() if path.exists() else []

    try:
        # HTTP: token 1 blocks in Triton past the gateway's timeout
        first = call(url, _gate_body(1), KEY)[0]
        second = call(url, _gate_body(2), KEY)[0]  # while Triton still computes 1
        (release / "1").touch()
        (release / "3").touch()
        third = wait_for(
            lambda: call(url, _gate_body(3), KEY)[0] == 200, "the slot back after Triton"
        )
        # gRPC: the same with token 4 (blocked) and 5 (must be refused)
        fourth = grpc_infer(4)
        fifth = grpc_infer(5)
        (release / "4").touch()
        (release / "6").touch()
        sixth = wait_for(lambda: grpc_infer(6) == "OK", "the gRPC slot back after Triton")
    finally:
        client.close()
        gw.stop()
    assert (first, second, third) == (504, 429, True)
    assert (fourth, fifth, sixth) == (
        "StatusCode.DEADLINE_EXCEEDED",
        "StatusCode.RESOURCE_EXHAUSTED",
        True,
    )
    assert sorted(ran()) == ["1", "3", "4", "6"]  # 2 and 5 never reached Triton
    records = [r for r in gw.audit_lines() if r["type"] == "request"]
    refused = [r for r in records if r["status"] == 429]
    assert len(refused) >= 2 and all(r["limit"] == "concurrent" for r in refused)
