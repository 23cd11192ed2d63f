"""The ModelLicense reconcile: its status (seat usage, validity), and the models it
re-evaluates when its terms or state change."""

from __future__ import annotations

from modelseal.handlers.controller.context import (
    LICENSES,
    Context,
    Enqueue,
    Memory,
    WakeupCause,
    models_of_license,
)
from modelseal.handlers.controller.status import StatusWriter
from modelseal.models.license import license_usage
from modelseal.models.spec import LICENSE_KIND, parse_meta
from modelseal.models.status import license_status
from modelseal.policies import gates, licensing, reporting


class LicenseReconciler:
    def __init__(
        self, ctx: Context, memory: Memory, enqueue: Enqueue, status: StatusWriter
    ) -> None:
        self.ctx = ctx
        self.memory = memory
        self.enqueue = enqueue
        self.status = status

    async def reconcile(self, namespace: str, name: str) -> float | None:
        kube = self.ctx.kube
        body = await kube.get(LICENSES, namespace, name)
        key = f"{namespace}/{name}"
        named = licensing.models_naming(
            await models_of_license(kube, self.memory, namespace, name), name
        )
        if body is None:
            if self.memory.license_seen.pop(key, None) is not None or named:
                for m in named:
                    self.enqueue.model(namespace, m["metadata"]["name"])
            return None
        meta = parse_meta(body)
        ref = reporting.ref(LICENSE_KIND, meta)
        now = self.ctx.now()
        lic, error = gates.parsed_license(body)
        parsed = licensing.readable(named)
        usage, grants = license_usage(lic, parsed, now) if lic is not None else (None, {})
        before = dict(body.get("status") or {})
        after = license_status(lic, meta.generation, error, usage, before, now)
        await self.status.write_license(ref, lic, before, after)
        # Re-evaluate the license's models when its terms or state changed.
        reason, _, moment = licensing.state(lic, error, now)
        seen = licensing.seen(meta, reason)
        if self.memory.license_seen.get(key) != seen:
            self.memory.license_seen[key] = seen
            for m in named:
                self.enqueue.model(namespace, m["metadata"]["name"])
        else:
            # Seats moved between its models (one grew, or left): those decide again.
            for model in licensing.seats_moved(named, grants):
                self.enqueue.model(namespace, model, cause=WakeupCause.SEATS)
        return licensing.next_look(moment, now, self.ctx.settings.expiry_check_interval_s)
