"""The operator's copy of the platform's tenancy declaration (issue 12, Medium 7).

Reads ``settings.tenancy_file`` (the chart's ConfigMap, mounted), again whenever the file
changes (the kubelet updates the mount after a ``helm upgrade``), and answers for one model
whether its namespace may use its Transit key and Triton image. A file that cannot be read
or parsed refuses every model (fail closed), naming the problem; no file configured means
no restriction (development without the chart).
"""

from __future__ import annotations

import logging
from pathlib import Path

from modelseal.k8s.api import Kube
from modelseal.models.spec import ModelSpec
from modelseal.models.tenancy import (
    UNRESTRICTED,
    Tenancy,
    TenancyError,
    namespace_refusal,
    parse_tenancy_text,
)
from modelseal.models.tenancy import refusal as tenancy_refusal

log = logging.getLogger(__name__)


class TenancySource:
    def __init__(self, path: Path | None, namespace_label: str = "") -> None:
        self.path = path
        self.namespace_label = namespace_label
        self._seen: tuple[int, int] | None = None
        self._current: Tenancy | str = UNRESTRICTED

    def current(self) -> Tenancy | str:
        """The declaration, or why it cannot be read."""
        if self.path is None:
            return UNRESTRICTED
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._seen:
                return self._current
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            self._seen = None
            self._current = f"cannot read {self.path}: {exc.strerror}"
            return self._current
        try:
            self._current = parse_tenancy_text(text, str(self.path))
        except TenancyError as exc:
            self._current = str(exc)
        self._seen = stamp
        if isinstance(self._current, str):
            log.error("tenancy declaration refused: %s", self._current)
        return self._current

    def refusal(self, spec: ModelSpec) -> str | None:
        """Why this model may not run here, or None."""
        tenancy = self.current()
        if isinstance(tenancy, str):
            return f"the platform's tenancy declaration cannot be used ({tenancy})"
        return tenancy_refusal(tenancy, spec.namespace, spec.transit_key, spec.serving.triton_image)

    async def check(self, spec: ModelSpec, kube: Kube) -> str | None:
        """`refusal`, then (cluster-wide mode) the namespace's Modelseal label."""
        if why := self.refusal(spec):
            return why
        if not self.namespace_label:
            return None
        labels = await kube.namespace_labels(spec.namespace)
        return namespace_refusal(spec.namespace, labels, self.namespace_label)
