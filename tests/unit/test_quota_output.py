"""Output policy: request rewriting and response enforcement."""

from __future__ import annotations

import pytest

from modelseal.quota.license import OutputFilter
from modelseal.quota.output import (
    OutputPolicyError,
    PlannedOutput,
    parse_class_entry,
    plan_outputs,
    restrict_entry,
    restrict_http_request,
    restrict_http_response,
)

MODEL_OUTPUTS = [("probs", "FP32"), ("logits", "FP16"), ("note", "BYTES")]
TOP3 = OutputFilter("top-k", 3)
LABELS = OutputFilter("labels-only", 1)


def test_plan_all_numeric_outputs_when_none_requested() -> None:
    assert plan_outputs(TOP3, MODEL_OUTPUTS, None) == [
        PlannedOutput("probs", 3),
        PlannedOutput("logits", 3),
    ]


def test_plan_caps_client_classification_and_drops_bytes() -> None:
    plan = plan_outputs(TOP3, MODEL_OUTPUTS, [("probs", 10), ("logits", 2), ("note", None)])
    assert plan == [PlannedOutput("probs", 3), PlannedOutput("logits", 2)]
    assert plan_outputs(TOP3, MODEL_OUTPUTS, [("probs", 0)]) == [PlannedOutput("probs", 3)]


def test_plan_refuses_when_nothing_may_go_out() -> None:
    with pytest.raises(OutputPolicyError):
        plan_outputs(TOP3, MODEL_OUTPUTS, [("note", None)])
    with pytest.raises(OutputPolicyError):
        plan_outputs(TOP3, [("note", "BYTES")], None)


def test_request_rewrite() -> None:
    req = {
        "id": "x",
        "inputs": [{"name": "in", "datatype": "FP32", "shape": [1], "data": [1.0]}],
        "outputs": [{"name": "probs", "parameters": {"binary_data": True}}],
        "parameters": {"binary_data_output": True},
    }
    out = restrict_http_request(req, [PlannedOutput("probs", 3)])
    assert out["outputs"] == [
        {"name": "probs", "parameters": {"classification": 3, "binary_data": False}}
    ]
    assert "parameters" not in out
    assert out["inputs"] == req["inputs"] and out["id"] == "x"
    keep = restrict_http_request({"parameters": {"a": 1, "binary_data_output": True}}, [])
    assert keep["parameters"] == {"a": 1}


def test_entries() -> None:
    assert parse_class_entry("0.93:7:seven") == (0.93, 7, "seven")
    assert parse_class_entry("0.5:2") == (0.5, 2, None)
    assert parse_class_entry("0.5:2:a:b") == (0.5, 2, "a:b")
    for bad in ("", "x", "a:b", "0.1:-1", "0.1:x:lab"):
        assert parse_class_entry(bad) is None
    assert restrict_entry("0.93:7:seven", LABELS) == "seven"
    assert restrict_entry("0.93:7", LABELS) == "7"
    assert restrict_entry("0.93:7:seven", TOP3) == "0.93:7:seven"


def resp(outputs: list[dict[str, object]]) -> dict[str, object]:
    return {"model_name": "m", "model_version": "1", "id": "r", "outputs": outputs}


def test_response_top_k_passes_conforming_outputs() -> None:
    out = {
        "name": "probs",
        "datatype": "BYTES",
        "shape": [1, 3],
        "data": ["0.9:1:a", "0.05:0:b", "0.01:2:c"],
    }
    got, dropped = restrict_http_response(resp([out]), TOP3, [PlannedOutput("probs", 3)])
    assert dropped == []
    assert got["outputs"] == [out]
    assert got["model_version"] == "1"


def test_response_labels_only_strips_scores() -> None:
    out = {
        "name": "probs",
        "datatype": "BYTES",
        "shape": [2, 1],
        "data": [["0.9:1:one"], ["0.8:4"]],
    }
    got, dropped = restrict_http_response(resp([out]), LABELS, [PlannedOutput("probs", 1)])
    assert dropped == []
    assert got["outputs"][0]["data"] == ["one", "4"]  # type: ignore[index]


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "probs", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.7]},
        {
            "name": "probs",
            "datatype": "BYTES",
            "shape": [1, 4],
            "data": ["0.1:0", "0.1:1", "0.1:2", "0.1:3"],
        },
        {"name": "probs", "datatype": "BYTES", "shape": [1, 1], "data": ["raw text"]},
        {"name": "probs", "datatype": "BYTES", "shape": [1, 2], "data": ["0.1:0"]},
        {
            "name": "probs",
            "datatype": "BYTES",
            "shape": [1, 1],
            "parameters": {"binary_data_size": 9},
        },
        {"name": "other", "datatype": "BYTES", "shape": [1, 1], "data": ["0.1:0"]},
        {"name": "probs", "datatype": "BYTES", "shape": [], "data": []},
        "not an object",
    ],
)
def test_response_drops_what_does_not_conform(bad: object) -> None:
    got, dropped = restrict_http_response(resp([bad]), TOP3, [PlannedOutput("probs", 3)])  # type: ignore[list-item]
    assert got["outputs"] == []
    assert len(dropped) == 1


def test_response_without_outputs_and_extra_parameters() -> None:
    got, dropped = restrict_http_response(
        {"model_name": "m", "parameters": {"binary_data_output": True}}, TOP3, []
    )
    assert got == {"model_name": "m", "outputs": []} and dropped == []
