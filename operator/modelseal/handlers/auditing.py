"""Audit records of the operator's decisions: key-access provisioning and license decisions.

Records go through the same hash-chained `AuditLog` as the gateway's (sink and HMAC key
from settings), as ``type: event`` lines with ``actor: modelseal-operator``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from modelseal.audit import AuditLog, FileSink, Sink, StdoutSink, WebhookSink
from modelseal.audit.keyfile import model_audit_key as derive_model_key
from modelseal.audit.keyfile import read_hmac_key, read_key
from modelseal.config import Settings

log = logging.getLogger(__name__)
ACTOR = "modelseal-operator"


def _sink(settings: Settings) -> Sink:
    if settings.audit_sink == "file":
        return FileSink(settings.audit_file)
    if settings.audit_sink == "webhook" and settings.audit_webhook_url:
        token = None
        if settings.audit_webhook_token_file is not None:
            token = read_key(settings.audit_webhook_token_file).decode()
        return WebhookSink(settings.audit_webhook_url, token=token)
    return StdoutSink()


def model_audit_key(settings: Settings, namespace: str, name: str) -> str | None:
    """The checkpoint key for one model's gateways, derived from the platform's audit key
    (``audit_hmac_key_file``, the chart's Secret), or None when the operator has none (the
    model then gets a random key, made once). Read on each call: a rotated Secret counts."""
    if settings.audit_hmac_key_file is None:
        return None
    master = read_hmac_key(settings.audit_hmac_key_file)
    return derive_model_key(master, namespace, name).decode()


class Auditor:
    def __init__(self, settings: Settings, instance: str = ACTOR) -> None:
        key = None
        if settings.audit_hmac_key_file is not None:
            key = read_hmac_key(settings.audit_hmac_key_file)
        self.log = AuditLog(
            _sink(settings),
            gateway=instance,
            hmac_key=key,
            checkpoint_every=settings.audit_checkpoint_every,
            capacity=settings.audit_queue_size,
            overflow="block",
            checkpoint_interval_s=settings.audit_checkpoint_interval_s,
            state_file=settings.audit_state_file,  # links a restart's chain (stdout sink)
        )
        self.records: list[dict[str, Any]] = []  # the last few, for tests and debugging
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self.log.start()
            self._started = True

    def record(self, action: str, obj: dict[str, Any], **fields: Any) -> None:
        record: dict[str, Any] = {
            "type": "event",
            "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": ACTOR,
            "action": action,
            "object": obj,
            **fields,
        }
        self.records = [*self.records[-99:], record]
        if not self.log.emit(record):
            log.error("audit record dropped (queue full): %s", action)

    async def close(self) -> None:
        if self._started:
            await self.log.close()
            self._started = False
