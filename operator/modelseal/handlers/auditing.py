"""Audit records of the operator's decisions: key-access provisioning and license decisions.

Records go through the same hash-chained `AuditLog` as the gateway's (sink and HMAC key
from settings), as ``type: event`` lines with ``actor: modelseal-operator``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from modelseal.audit import AuditLog, FileSink, Sink, StdoutSink, WebhookSink
from modelseal.config import Settings

log = logging.getLogger(__name__)
ACTOR = "modelseal-operator"


def _sink(settings: Settings) -> Sink:
    if settings.audit_sink == "file":
        return FileSink(settings.audit_file)
    if settings.audit_sink == "webhook" and settings.audit_webhook_url:
        token = None
        if settings.audit_webhook_token_file is not None:
            token = settings.audit_webhook_token_file.read_text().strip()
        return WebhookSink(settings.audit_webhook_url, token=token)
    return StdoutSink()


class Auditor:
    def __init__(self, settings: Settings, instance: str = ACTOR) -> None:
        key = None
        if settings.audit_hmac_key_file is not None:
            key = settings.audit_hmac_key_file.read_bytes().strip()
        self.log = AuditLog(
            _sink(settings),
            gateway=instance,
            hmac_key=key,
            checkpoint_every=settings.audit_checkpoint_every,
            capacity=settings.audit_queue_size,
            overflow="block",
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
