"""Reading the counters of models whose quota store is embedded (issue 14): the operator
asks each model's gateway (``GET /usage`` on its metrics port, ``modelseal.store.
usage_report``) over the Pod network, with the read token derived from the model's audit
key, which the operator keeps in the model's control Secret.

The Pods of a namespace are listed once per round and kept, until the round ends, as
`usage_pod_view`s (what `pick_pod` reads: whole Pods were 40 KB each as Python objects,
kept from one round to the next, 40 MB at 1,000 models); each model's read token is kept
until its gateway refuses it. Which Pod: a running one of the model's Deployment (its
selector labels, its ServiceAccount, owned by a ReplicaSet), the newest when a rollout has
two. The model's NetworkPolicy admits the operator's Pods on the metrics port
(``render.manifests``). A model with no running Pod has no counters to read (an emptyDir
went with its Pod; a claim is read again once the Pod runs) and is left out, named in
``not_running`` (and in the status's ``store``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from modelseal.config import Settings
from modelseal.k8s import api as k8s
from modelseal.k8s.api import Kube
from modelseal.models.spec import ModelSpec
from modelseal.render.manifests import AUDIT_KEY_KEY, ports
from modelseal.render.names import LABEL_MODEL, names_for, selector_labels
from modelseal.store.usage_report import USAGE_PATH, Counted, license_counts, usage_read_token

log = logging.getLogger("modelseal.operator.usage")


#: Every model Pod of a namespace (selector_labels less the model's own label).
_MODEL_PODS = ",".join(f"{k}={v}" for k, v in selector_labels("").items() if k != LABEL_MODEL)


class GatewayUnreadable(RuntimeError):
    """A model's gateway could not be asked, or its answer was not a usage report."""


@dataclass
class PodsReading:
    """One license's counters summed over its models' gateways."""

    total: Counted = field(default_factory=lambda: Counted(0, 0, 0))
    models: dict[str, Counted] = field(default_factory=dict)  # ProtectedModel name -> counts
    pods: list[str] = field(default_factory=list)
    not_running: list[str] = field(default_factory=list)


def _strip_line_end(data: bytes) -> bytes:
    """As ``modelseal.audit.keyfile.read_key`` reads the mounted file."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def usage_pod_view(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What `pick_pod` and the model's label filter read of a Pod, in the Pod's shape."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": dict(meta.get("labels") or {}),
            "creationTimestamp": meta.get("creationTimestamp"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "ownerReferences": [
                {"kind": o.get("kind"), "controller": o.get("controller")}
                for o in meta.get("ownerReferences") or []
                if isinstance(o, Mapping)
            ],
        },
        "spec": {"serviceAccountName": spec.get("serviceAccountName")},
        "status": {"phase": status.get("phase"), "podIP": status.get("podIP")},
    }


def pick_pod(pods: Sequence[Mapping[str, Any]], service_account: str) -> Mapping[str, Any] | None:
    """The newest running Pod of the model's Deployment; None if none runs."""
    ours = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        owned = any(
            o.get("kind") == "ReplicaSet" and o.get("controller")
            for o in meta.get("ownerReferences") or []
        )
        if (
            owned
            and not meta.get("deletionTimestamp")
            and spec.get("serviceAccountName") == service_account
            and status.get("phase") == "Running"
            and status.get("podIP")
        ):
            ours.append(pod)
    ours.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
    return ours[-1] if ours else None


class GatewayUsageReader:
    def __init__(self, kube: Kube, settings: Settings, timeout_s: float = 5.0) -> None:
        self.kube = kube
        self.settings = settings
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # Per round: one Pod list per namespace (all model Pods, as usage_pod_view), not
        # one per model; let go of by `end_round`.
        self._pods: dict[str, list[dict[str, Any]]] = {}
        # Read tokens by model uid; dropped when a gateway refuses one (a new key).
        self._tokens: dict[str, str] = {}

    def end_round(self) -> None:
        """Let go of this round's Pods (nothing keeps them until the next round)."""
        self._pods.clear()

    def forget_except(self, uids: set[str]) -> None:
        for uid in set(self._tokens) - uids:
            del self._tokens[uid]

    async def _model_pods(self, model: ModelSpec) -> list[dict[str, Any]]:
        pods = self._pods.get(model.namespace)
        if pods is None:
            listed = await self.kube.list(k8s.POD, model.namespace, label_selector=_MODEL_PODS)
            pods = [usage_pod_view(p) for p in listed]
            del listed
            self._pods[model.namespace] = pods
        wanted = selector_labels(model.name)
        return [
            p
            for p in pods
            if all(
                ((p.get("metadata") or {}).get("labels") or {}).get(k) == v
                for k, v in wanted.items()
            )
        ]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _token(self, model: ModelSpec) -> str:
        cached = self._tokens.get(model.uid)
        if cached is not None:
            return cached
        names = names_for(model.namespace, model.name, model.uid, self.settings.vault_policy_prefix)
        secret = await self.kube.get(k8s.SECRET, model.namespace, names.control_secret)
        raw = ((secret or {}).get("data") or {}).get(AUDIT_KEY_KEY)
        if not raw:
            raise GatewayUnreadable(
                f"Secret {model.namespace}/{names.control_secret} holds no audit key"
            )
        token = usage_read_token(_strip_line_end(base64.b64decode(raw)))
        self._tokens[model.uid] = token
        return token

    async def _report(self, model: ModelSpec, pod: Mapping[str, Any]) -> Any:
        ip = str((pod.get("status") or {}).get("podIP"))
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{ports(self.settings).gateway_metrics}{USAGE_PATH}"
        headers = {"Authorization": f"Bearer {await self._token(model)}"}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        pod_name = (pod.get("metadata") or {}).get("name")
        try:
            async with self._session.get(url, headers=headers) as resp:
                if resp.status == 401:
                    self._tokens.pop(model.uid, None)  # read the key again next round
                if resp.status != 200:
                    text = (await resp.text())[:200].strip()
                    raise GatewayUnreadable(
                        f"gateway of model {model.key} (Pod {pod_name}) answered "
                        f"HTTP {resp.status}: {text}"
                    )
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise GatewayUnreadable(
                f"gateway of model {model.key} (Pod {pod_name}, {url}): {type(exc).__name__}: {exc}"
            ) from None

    async def read(self, license_id: str, models: list[ModelSpec]) -> PodsReading:
        """Sum the license's counters over ``models``' gateways (each its own store).
        Raises GatewayUnreadable."""
        out = PodsReading()
        day = month = lifetime = 0
        for model in models:
            pods = await self._model_pods(model)
            names = names_for(
                model.namespace, model.name, model.uid, self.settings.vault_policy_prefix
            )
            pod = pick_pod(pods, names.service_account)
            if pod is None:
                out.not_running.append(model.name)
                continue
            try:
                counts = license_counts(await self._report(model, pod), license_id)
            except ValueError as exc:
                raise GatewayUnreadable(f"gateway of model {model.key}: {exc}") from None
            out.pods.append(f"{model.namespace}/{(pod.get('metadata') or {}).get('name')}")
            if counts is None:  # the gateway has not loaded the license (yet): nothing counted
                out.models[model.name] = Counted(0, 0, 0)
                continue
            day += counts.total.day
            month += counts.total.month
            lifetime += counts.total.lifetime
            # An older gateway (license file without model_counters) keys by the Triton name.
            mine = counts.models.get(model.key) or counts.models.get(model.model_name)
            out.models[model.name] = mine or Counted(0, 0, 0)
        out.total = Counted(day, month, lifetime)
        return out
