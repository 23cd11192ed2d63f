"""core/v1 Events and log lines about a custom resource."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError, Kube
from modelseal.policies.reporting import event_body

log = logging.getLogger("modelseal.operator")


class Events:
    def __init__(self, kube: Kube, now: Callable[[], datetime]) -> None:
        self.kube = kube
        self.now = now

    async def post(
        self, involved: Mapping[str, str], type_: str, reason: str, message: str
    ) -> None:
        """Post a core/v1 Event about a custom resource (best effort)."""
        body = event_body(involved, type_, reason, message, self.now())
        try:
            await self.kube.create(k8s.EVENT, involved["namespace"], body)
        except ApiError as exc:
            log.warning("could not post Event %s: %s", reason, exc)


def log_about(level: int, ref: Mapping[str, str], msg: str, *args: Any) -> None:
    """A log line about the object `ref` (the JSON formatter shows it)."""
    log.log(level, msg, *args, extra={"k8s_ref": dict(ref)})
