"""The tenancy declaration (issue 12, Medium 7): parsing, decisions and the operator's copy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.unit.test_models_spec import model_body

from modelseal.cli import main as cli_main
from modelseal.handlers.tenancy import TenancySource
from modelseal.models.spec import parse_model
from modelseal.models.tenancy import (
    UNRESTRICTED,
    TenancyError,
    Unlisted,
    image_allowed,
    namespace_refusal,
    parse_tenancy,
    refusal,
)
from modelseal.render.operator_policy import operator_policy

DECL = {
    "unlisted": "Refuse",
    "namespaces": {
        "team-a": {
            "transitKeys": ["digits-key"],
            "images": ["nvcr.io/nvidia/tritonserver", "registry.acme.io/triton/"],
        },
        "team-b": {"transitKeys": ["b-key"]},
    },
}
DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("nvcr.io/nvidia/tritonserver", True),
        ("nvcr.io/nvidia/tritonserver:24.08-py3", True),
        (f"nvcr.io/nvidia/tritonserver@{DIGEST}", True),
        (f"nvcr.io/nvidia/tritonserver:24.08@{DIGEST}", True),
        ("registry.acme.io/triton/server:1", True),
        ("registry.acme.io/triton/a/b:1", True),
        ("nvcr.io/nvidia/tritonserver-evil:1", False),
        ("nvcr.io/nvidia/tritonserver/evil:1", False),
        ("nvcr.io/nvidia/tritonserverx", False),
        ("evil.io/nvcr.io/nvidia/tritonserver:1", False),
        ("nvcrxio/nvidia/tritonserver:1", False),
        ("registry.acme.io/triton", False),
        ("registry.acme.io/triton/", False),
        ("registry.acme.io/triton/../x:1", False),
        ("registry.acme.io/tritonx/a:1", False),
        ("nvcr.io/nvidia/tritonserver:1 evil", False),
        ("nvcr.io/nvidia/tritonserver:1\n", False),
    ],
)
def test_image_entries_match_repository_and_prefix_only(image: str, ok: bool) -> None:
    entries = ("nvcr.io/nvidia/tritonserver", "registry.acme.io/triton/")
    assert image_allowed(image, entries) is ok


def test_refusal_names_what_is_not_allowed() -> None:
    t = parse_tenancy(DECL)
    assert refusal(t, "team-a", "digits-key", None) is None
    assert refusal(t, "team-a", "digits-key", "nvcr.io/nvidia/tritonserver:24.08-py3") is None
    why = refusal(t, "team-a", "b-key", None)
    assert why is not None
    assert "Transit key b-key is not allowed in namespace team-a (allowed: digits-key)" in why
    why = refusal(t, "team-b", "b-key", "evil.io/copy-out:1")
    assert why is not None
    assert "Triton image evil.io/copy-out:1 is not allowed in namespace team-b" in why
    assert "allowed repositories: none" in why
    why = refusal(t, "team-c", "b-key", None)
    assert why is not None and "namespace team-c may use no Transit key" in why
    t_any = parse_tenancy({**DECL, "unlisted": "Any"})
    assert refusal(t_any, "team-c", "anything", "any/image") is None
    assert refusal(t_any, "team-a", "b-key", None) is not None  # listed: still enforced
    assert refusal(UNRESTRICTED, "x", "y", "z") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be an object"),
        ({"unlisted": "Maybe"}, "tenancy.unlisted must be Refuse or Any"),
        ({"namespaces": {"Team_A": {}}}, "not a namespace name"),
        ({"namespaces": {"a": {"transitKeys": "k"}}}, "transitKeys must be a list"),
        ({"namespaces": {"a": {"transitKeys": ["k*"]}}}, "'k*' is not a Transit key name"),
        ({"namespaces": {"a": {"images": ['x" evil']}}}, "is not an image repository"),
        ({"namespaces": {"a": {"keys": []}}}, "unknown fields keys"),
        ({"extra": 1}, "unknown tenancy fields: extra"),
    ],
)
def test_bad_declarations_are_refused_with_a_clear_message(data: object, message: str) -> None:
    with pytest.raises(TenancyError, match=message.replace("*", r"\*")):
        parse_tenancy(data)


def test_operator_source_reads_rereads_and_fails_closed(tmp_path: Path) -> None:
    spec = parse_model(model_body())  # team-a, digits-key
    assert TenancySource(None).refusal(spec) is None
    path = tmp_path / "tenancy.json"
    source = TenancySource(path)
    assert "cannot read" in (source.refusal(spec) or "")
    path.write_text(json.dumps(DECL))
    assert source.refusal(spec) is None
    other = parse_model(model_body(vault={"transitKey": "b-key"}))
    assert "Transit key b-key is not allowed" in (source.refusal(other) or "")
    path.write_text("{not json")
    os.utime(path, ns=(1, 1))
    assert "cannot be used" in (source.refusal(spec) or "")


def test_operator_policy_pins_bodies_namespaces_and_policies() -> None:
    hcl = operator_policy(
        parse_tenancy(DECL),
        prefix="modelseal",
        transit_mount="transit",
        kubernetes_mount="kubernetes",
        audience="vault",
    )
    assert 'path "sys/policies/acl/modelseal_team-a_*"' in hcl
    assert 'path \\"transit/decrypt/digits-key\\"' in hcl
    assert '"bound_service_account_namespaces" = ["team-b"]' in hcl
    assert '"token_policies" = ["modelseal_team-b_*"]' in hcl
    assert 'path "transit/keys/b-key"' in hcl and 'path "transit/keys/*"' not in hcl
    assert "WRITE any policy" not in hcl
    broad = operator_policy(
        parse_tenancy({**DECL, "unlisted": Unlisted.ANY.value}),
        prefix="modelseal",
        transit_mount="transit",
        kubernetes_mount="kubernetes",
        audience="vault",
    )
    assert "WRITE any policy" in broad and 'path "transit/keys/*"' in broad


def test_cli_prints_the_policy_from_a_values_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps({"vault": {"addr": "x"}, "tenancy": DECL}))
    assert cli_main.main(["vault-operator-policy", str(values), "--transit-mount", "tr"]) == 0
    out = capsys.readouterr().out
    assert 'path "tr/keys/digits-key"' in out and "modelseal_team-a_*" in out
    rendered = tmp_path / "tenancy.json"  # the chart's ConfigMap item
    rendered.write_text(json.dumps(DECL))
    assert cli_main.main(["vault-operator-policy", str(rendered)]) == 0
    assert "modelseal_team-b_*" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"tenancy": {"unlisted": "Sometimes"}}))
    assert cli_main.main(["vault-operator-policy", str(bad)]) == 2
    assert "tenancy.unlisted must be Refuse or Any" in capsys.readouterr().err
    assert cli_main.main(["vault-operator-policy", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_namespace_label_refusal_names_the_label() -> None:
    required = "modelseal.io/enabled=true"
    assert namespace_refusal("a", {"modelseal.io/enabled": "true"}, required) is None
    assert namespace_refusal("a", None, "") is None  # no label required
    for labels in ({}, {"modelseal.io/enabled": "false"}, None):
        why = namespace_refusal("a", labels, required)
        assert why is not None
        assert "namespace a is not labelled modelseal.io/enabled=true" in why
        assert "kubectl label namespace a modelseal.io/enabled=true" in why
