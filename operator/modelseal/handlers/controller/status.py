"""The status of models and licenses: patched only when it changed, with an Event, a
metric, a log line and (for license decisions) an audit record per condition change.

`modelseal.models.status` computes the status; `modelseal.policies.reporting` says how
each change is told."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from modelseal.handlers.controller.context import LICENSES, MODELS, Context
from modelseal.handlers.controller.events import Events, log_about
from modelseal.k8s.cache import Echoes
from modelseal.models.spec import LicenseSpec, ModelSpec
from modelseal.models.status import LICENSE_VALID, ModelObservation, model_status
from modelseal.policies import reporting
from modelseal.policies.objects import merge_patch


class StatusWriter:
    def __init__(self, ctx: Context, events: Events) -> None:
        self.ctx = ctx
        self.events = events
        #: model key -> condition type -> status, and their sums (the models gauge),
        #: kept as they change: summing every model on each write grew with the square of
        #: the models.
        self._conditions: dict[str, dict[str, str]] = {}
        self._counts = reporting.condition_counts(())
        self._refresh_gauge(self._counts)
        #: The resourceVersions our status patches made: their watch events wake nothing.
        self.model_echoes = Echoes()
        self.license_echoes = Echoes()

    async def write_model(
        self,
        ref: Mapping[str, str],
        obs: ModelObservation,
        before: dict[str, Any],
        now: datetime,
        spec: ModelSpec | None,
    ) -> None:
        after = model_status(obs, before, now)
        self._track(f"{ref['namespace']}/{ref['name']}", after)
        if after == before:
            return
        written = await self.ctx.kube.merge_patch(
            MODELS,
            ref["namespace"],
            ref["name"],
            {"status": merge_patch(before, after)},
            sub="status",
        )
        self.model_echoes.wrote(ref["namespace"], ref["name"], written)
        for change in reporting.model_transitions(before.get("conditions"), after["conditions"]):
            if change.announced:
                await self.events.post(
                    ref,
                    change.event_type,
                    change.reason,
                    f"{change.type}={change.status}: {change.message}",
                )
            if change.type == LICENSE_VALID:
                self.ctx.metrics.license_decisions.labels(change.reason).inc()
                self.ctx.auditor.record(
                    "license.decision",
                    dict(ref),
                    tenant=spec.tenant if spec else None,
                    license=spec.license_name if spec else None,
                    granted=change.status == "True",
                    reason=change.reason,
                    message=change.message,
                    replicas=obs.granted_replicas,
                    gpus=(spec.serving.gpus_per_replica * obs.granted_replicas) if spec else 0,
                )
            log_about(
                logging.WARNING if change.problem else logging.INFO,
                ref,
                "%s=%s (%s): %s",
                change.type,
                change.status,
                change.reason,
                change.message,
            )

    async def write_license(
        self,
        ref: Mapping[str, str],
        lic: LicenseSpec | None,
        before: dict[str, Any],
        after: dict[str, Any],
    ) -> None:
        if after == before:
            return
        namespace, name = ref["namespace"], ref["name"]
        written = await self.ctx.kube.merge_patch(
            LICENSES, namespace, name, {"status": merge_patch(before, after)}, sub="status"
        )
        self.license_echoes.wrote(namespace, name, written)
        for change in reporting.license_transitions(before.get("conditions"), after["conditions"]):
            await self.events.post(
                ref,
                change.event_type,
                change.reason,
                f"license {name} of tenant {lic.tenant if lic else '?'}: {change.message}",
            )
            self.ctx.auditor.record(
                "license.state",
                dict(ref),
                tenant=lic.tenant if lic else None,
                valid=change.good,
                reason=change.reason,
                message=change.message,
            )

    def forget_model(self, key: str) -> None:
        old = self._conditions.pop(key, None)
        namespace, _, name = key.partition("/")
        self.model_echoes.forget(namespace, name)
        if old:
            self._refresh_gauge(reporting.count_in(self._counts, old, -1))

    def _track(self, key: str, status: Mapping[str, Any]) -> None:
        new = reporting.condition_values(status)
        old = self._conditions.get(key)
        if old == new:
            return
        self._conditions[key] = new
        touched = reporting.count_in(self._counts, old, -1) if old else []
        touched += reporting.count_in(self._counts, new, 1)
        self._refresh_gauge(touched)

    def _refresh_gauge(self, pairs: Iterable[tuple[str, str]]) -> None:
        for ctype, value in set(pairs):
            self.ctx.metrics.models.labels(ctype, value).set(self._counts[(ctype, value)])
