"""Output policy: what a tenant may see of a model's outputs, as pure functions.

Modes (from the license's ``output_policy``):

* ``full``: responses pass through untouched.
* ``top-k``: only the ``k`` best classes, each as Triton's classification string
  ``"<score>:<index>[:<label>]"``.
* ``labels-only``: only the ``k`` (default 1) best classes, without scores: each entry is
  the class label, or its index where the model has no labels.

How it is enforced, whatever the client asked: under a restricted mode the gateway rewrites
the request so that Triton returns *every* numeric output of the model through the KServe
classification extension (``parameters.classification = k``, never binary), drops BYTES
outputs, and caps a client's own ``classification`` at ``k``. On the way back it checks
each returned output again (BYTES, at most ``k`` entries per row, well-formed entries) and
drops any output that does not conform, then strips scores for ``labels-only``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from modelseal.quota.license import OutputFilter

NUMERIC_DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BF16",
    }
)


class OutputPolicyError(ValueError):
    """The client asked only for outputs the policy does not let out (HTTP 403)."""


@dataclass(frozen=True, slots=True)
class PlannedOutput:
    name: str
    classification: int


def plan_outputs(
    policy: OutputFilter,
    model_outputs: Sequence[tuple[str, str]],
    requested: Sequence[tuple[str, int | None]] | None,
) -> list[PlannedOutput]:
    """Outputs to ask Triton for under a restricted policy.

    ``model_outputs``: (name, datatype) from the model metadata. ``requested``: the
    client's outputs with the classification count it asked for, or None for "all".
    """
    numeric = [name for name, datatype in model_outputs if datatype in NUMERIC_DATATYPES]
    if requested is None:
        plan = [PlannedOutput(name, policy.k) for name in numeric]
    else:
        plan = []
        for name, asked in requested:
            if name not in numeric:
                continue
            count = policy.k if asked is None or asked <= 0 else min(asked, policy.k)
            plan.append(PlannedOutput(name, count))
    if not plan:
        raise OutputPolicyError(
            f"the license's output policy ({policy.mode}) lets out only class results of "
            "numeric outputs, and none was requested"
        )
    return plan


def restrict_http_request(request: dict[str, Any], plan: Sequence[PlannedOutput]) -> dict[str, Any]:
    """The KServe v2 JSON request rewritten for the plan (outputs replaced, no binary)."""
    out = dict(request)
    out["outputs"] = [
        {"name": p.name, "parameters": {"classification": p.classification, "binary_data": False}}
        for p in plan
    ]
    params = out.get("parameters")
    if isinstance(params, dict):
        params = {k: v for k, v in params.items() if k != "binary_data_output"}
        if params:
            out["parameters"] = params
        else:
            del out["parameters"]
    return out


def parse_class_entry(entry: str) -> tuple[float, int, str | None] | None:
    """Split ``"<score>:<index>[:<label>]"``; None if it is not one."""
    parts = entry.split(":", 2)
    if len(parts) < 2:
        return None
    try:
        score = float(parts[0])  # Triton prints "nan"/"inf" as such; float() takes them
        index = int(parts[1])
    except ValueError:
        return None
    if index < 0:
        return None
    return score, index, parts[2] if len(parts) == 3 else None


def restrict_entry(entry: str, policy: OutputFilter) -> str | None:
    """One classification entry as the policy lets it out; None if malformed."""
    parsed = parse_class_entry(entry)
    if parsed is None:
        return None
    if policy.mode == "labels-only":
        _, index, label = parsed
        return label if label else str(index)
    return entry


def _flatten(data: Any) -> list[Any] | None:
    if not isinstance(data, list):
        return None
    flat: list[Any] = []
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def restrict_values(
    values: Iterable[str], shape: Sequence[int], plan: PlannedOutput, policy: OutputFilter
) -> list[str] | None:
    """Check and restrict one output's entries; None if the output does not conform."""
    if not shape or shape[-1] > plan.classification or shape[-1] < 0:
        return None
    out: list[str] = []
    for value in values:
        restricted = restrict_entry(value, policy)
        if restricted is None:
            return None
        out.append(restricted)
    if len(out) != math.prod(shape):
        return None
    return out


def restrict_http_response(
    response: dict[str, Any], policy: OutputFilter, plan: Sequence[PlannedOutput]
) -> tuple[dict[str, Any], list[str]]:
    """The KServe v2 JSON response as the policy lets it out, and the dropped outputs."""
    by_name = {p.name: p for p in plan}
    kept: list[dict[str, Any]] = []
    dropped: list[str] = []
    outputs = response.get("outputs")
    for output in outputs if isinstance(outputs, list) else []:
        name = output.get("name") if isinstance(output, dict) else None
        planned = by_name.get(name) if isinstance(name, str) else None
        values = _flatten(output.get("data")) if isinstance(output, dict) else None
        shape = output.get("shape") if isinstance(output, dict) else None
        restricted = None
        if (
            planned is not None
            and values is not None
            and output.get("datatype") == "BYTES"
            and isinstance(shape, list)
            and all(isinstance(d, int) for d in shape)
            and all(isinstance(v, str) for v in values)
            and not (output.get("parameters") or {}).get("binary_data_size")
        ):
            restricted = restrict_values(values, shape, planned, policy)
        if restricted is None:
            dropped.append(str(name))
            continue
        kept.append({"name": name, "datatype": "BYTES", "shape": shape, "data": restricted})
    out = {k: v for k, v in response.items() if k not in ("outputs", "parameters")}
    out["outputs"] = kept
    return out, dropped
