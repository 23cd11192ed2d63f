"""Metered usage export (issue 14, item 3) from real gateway processes in front of the real
Triton to a real HTTP receiver started by the test (modelseal_devenv.usage_receiver): a
receiver that is down loses nothing, a gateway killed in the middle of a POST re-sends, and
after de-duplication every admitted request is billed exactly once (refused ones never)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from bench.gateway.harness import (
    GatewayProcess,
    call,
    digits_body,
    license_doc,
    write_keys,
    write_license,
)

from modelseal.audit.usage import USAGE_EVENT_TYPE
from modelseal_devenv.common import wait_until
from modelseal_devenv.triton import TritonServer
from modelseal_devenv.usage_receiver import UsageReceiver

pytestmark = pytest.mark.integration

KEY = "usage-export-key-0123456789abcdef"


def _gateway(
    tmp: Path, triton: TritonServer, receiver: UsageReceiver, **env: str
) -> GatewayProcess:
    return GatewayProcess(
        tmp,
        triton_http_url=triton.http_url,
        triton_grpc_url=triton.grpc_url,
        env={
            "MODELSEAL_USAGE_EXPORT_URL": receiver.url,
            "MODELSEAL_USAGE_EXPORT_INTERVAL_S": "0.1",
            "MODELSEAL_USAGE_EXPORT_RETRY_MAX_S": "0.4",
            **env,
        },
    )


def _calls(gw: GatewayProcess, n: int) -> list[int]:
    url = f"{gw.http_url}/v2/models/digits/infer"
    return [call(url, digits_body(), KEY)[0] for _ in range(n)]


def _metered(gw: GatewayProcess) -> set[str]:
    return {r["hash"] for r in gw.audit_lines() if r.get("metered") is True}


def test_a_receiver_down_loses_nothing(tmp_path: Path, triton_server: TritonServer) -> None:
    tenant = "usage-down"
    write_license(tmp_path / "license.json", license_doc(tenant, ["digits"], quotas={"total": 12}))
    write_keys(tmp_path / "keys.json", {"c": (tenant, KEY)})
    receiver = UsageReceiver()  # its port is chosen, nothing listens there yet: it is down
    gw = _gateway(tmp_path, triton_server, receiver).start()
    try:
        codes = _calls(gw, 15)
        assert codes == [200] * 12 + [429] * 3
        # the shipper keeps trying while the receiver is down (with back-off)
        wait_until(
            lambda: gw.metric("modelseal_gateway_usage_export_failures_total") >= 5,
            "five failed deliveries",
            60,
        )
        assert gw.log_path.read_text().count("usage export to") >= 5
        assert receiver.received == 0
        assert gw.metric("modelseal_gateway_usage_export_backlog_bytes") > 0
        receiver.start()
        wait_until(lambda: receiver.billed(tenant) == 12, "12 requests billed", 60)
        time.sleep(0.5)  # nothing more arrives
        assert receiver.billed(tenant) == 12 and len(receiver.events) == 12
        assert gw.metric("modelseal_gateway_usage_events_delivered_total") == 12
        ids = {event_id for _source, event_id in receiver.events}
        assert ids == _metered(gw)  # one event per admitted request, its record's hash
        for data in receiver.events.values():
            assert data["type"] == USAGE_EVENT_TYPE and data["subject"] == tenant
            assert data["model"] == "digits" and data["count"] == 1
            assert len(data["day"]) == 10 and data["day"].startswith(data["month"])
    finally:
        gw.stop()
        receiver.stop()


def test_gateway_killed_mid_send_bills_each_request_once(
    tmp_path: Path, triton_server: TritonServer
) -> None:
    tenant = "usage-kill"
    write_license(tmp_path / "license.json", license_doc(tenant, ["digits"]))
    write_keys(tmp_path / "keys.json", {"c": (tenant, KEY)})
    with UsageReceiver() as receiver:
        receiver.hold()  # keeps what arrives, acknowledges nothing
        gw = _gateway(tmp_path, triton_server, receiver, MODELSEAL_USAGE_EXPORT_BATCH_MAX="4")
        gw.start()
        try:
            assert _calls(gw, 10) == [200] * 10
            wait_until(lambda: receiver.pending >= 1, "a POST in flight", 30)
            gw.kill()  # SIGKILL while the receiver holds a POST: no 2xx, no cursor
            receiver.release()
            assert receiver.received >= 1
            gw.start()  # resumes from its cursor (none yet): sends everything again
            assert _calls(gw, 3) == [200] * 3
            wait_until(lambda: receiver.billed(tenant) == 13, "13 requests billed", 60)
            gw.stop()  # drains, then seals
            time.sleep(0.3)
        finally:
            gw.kill()
    cursor = json.loads((gw.audit_file.parent / (gw.audit_file.name + ".usage-cursor")).read_text())
    assert cursor["hash"] in {r["hash"] for r in gw.audit_lines()}
    assert receiver.received > len(receiver.events)  # re-sent events arrived twice ...
    assert receiver.billed(tenant) == 13 == len(_metered(gw))  # ... and count once
