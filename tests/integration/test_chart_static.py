"""The Helm chart without a cluster: lint, render, values schema, RBAC and pod settings.

helm is built from its Go module by devenv/build-helm.sh (cached); tests that need it are
marked integration. The CRD-copy checks need nothing and run as unit tests.
tests/integration/test_chart_install.py sends what is rendered here to a real API server.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelseal"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
RELEASE_NS = "modelseal-system"


# --------------------------------------------------------------------------- helpers


def build_helm() -> Path:
    """devenv/build-helm.sh: a no-op when the cached binary is current."""
    result = subprocess.run(
        ["bash", str(REPO / "devenv" / "build-helm.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    assert result.returncode == 0, f"build-helm.sh failed:\n{result.stderr[-4000:]}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def helm() -> Path:
    return build_helm()


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=300
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
    return result


def render(
    helm: Path, *values_files: Path, sets: tuple[str, ...] = (), release: str = "ms"
) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", RELEASE_NS]
    for f in values_files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    out = run_helm(helm, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


# --------------------------------------------------------------------------- lint/render


@pytest.mark.integration
@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_helm_lint(helm: Path, values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict", "--namespace", RELEASE_NS]
    if values:
        args += ["-f", str(values)]
    out = run_helm(helm, *args).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.integration
def test_defaults_render_the_core(helm: Path) -> None:
    docs = render(helm)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    # Optional blocks stay off by default.
    assert not by_kind(docs, "ServiceMonitor")
    assert not by_kind(docs, "PodMonitor")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]


@pytest.mark.integration
def test_every_optional_block_renders(helm: Path) -> None:
    docs = render(helm, ALL_ON)
    kinds = {d["kind"] for d in docs}
    for kind in ("ServiceMonitor", "PodMonitor", "PersistentVolumeClaim", "ConfigMap"):
        assert kind in kinds, kind
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "ms-modelseal-redis") in names
    assert ("ValidatingAdmissionPolicy", "ms-modelseal-output-policy") in names
    dashboard = by_kind(docs, "ConfigMap")[0]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.integration
def test_operator_runs_one_replica_with_recreate(helm: Path) -> None:
    dep = next(
        d
        for d in by_kind(render(helm), "Deployment")
        if d["metadata"]["name"] == "ms-modelseal-operator"
    )
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELSEAL_VAULT_ADDR"].startswith("http")
    assert env["MODELSEAL_NAMESPACES"] == "[]"
    assert env["MODELSEAL_OPERATOR_TOKEN_FILE"] == "/var/run/secrets/modelseal/vault/token"
    assert env["MALLOC_ARENA_MAX"] == "2"  # glibc arenas per thread (issue 13 §3)


@pytest.mark.integration
def test_settings_passed_to_the_operator_exist(helm: Path) -> None:
    """Every MODELSEAL_* variable the chart sets is a field of modelseal.config.Settings."""
    from modelseal.config import Settings

    fields = {f"MODELSEAL_{name.upper()}" for name in Settings.model_fields}
    for values in (None, ALL_ON):
        docs = render(helm, *([values] if values else []))
        for _, spec in pod_specs(docs):
            for container in spec["containers"]:
                names = [e["name"] for e in container.get("env", [])]
                assert len(names) == len(set(names)), f"duplicate env in {container['name']}"
                for e in container.get("env", []):
                    if e["name"].startswith("MODELSEAL_"):
                        assert e["name"] in fields, f"{e['name']} is not a setting"


# --------------------------------------------------------------------------- schema


BAD_VALUES = [
    ("operator.replicas=two", "operator.replicas", "integer"),
    ("operator.replicas=2", "operator.replicas", "maximum"),
    ("admission.outputPolicy.allowedModes={full,everything}", "allowedModes", "full"),
    ("operator.logLevel=LOUD", "operator.logLevel", "INFO"),
    ("vault.addr=vault:8200", "vault.addr", "pattern"),
    ("admission.breakGlassGroup=system:masters", "breakGlassGroup", "not"),
    ("admission.validationActions={Deny,Warn}", "validationActions", "not"),
    ("operator.watchNamespaces={Bad_Name}", "watchNamespaces", "pattern"),
    ("operatr.replicas=1", "operatr", "additional"),
    ("operator.image.digest=latest", "digest", "pattern"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("setting", "path", "word"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_schema_refuses_wrong_values(helm: Path, setting: str, path: str, word: str) -> None:
    result = run_helm(helm, "template", "ms", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0, f"--set {setting} was accepted"
    err = result.stderr
    assert "values don't meet the specifications of the schema" in err, err
    assert path.split(".")[-1] in err, err
    assert word.lower() in err.lower(), err


@pytest.mark.integration
def test_schema_refuses_a_string_replica_count_from_a_file(helm: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('operator:\n  replicas: "1"\n')
    result = run_helm(helm, "template", "ms", str(CHART), "-f", str(bad), check=False)
    assert result.returncode != 0
    assert "/operator/replicas" in result.stderr or "operator.replicas" in result.stderr
    assert "got string, want integer" in result.stderr or "expected integer" in result.stderr


# --------------------------------------------------------------------------- CRDs


def test_chart_crds_are_copies_of_crds_folder() -> None:
    """charts/modelseal/files/crds is made by `make chart-crds`, never edited by hand."""
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert source, "crds/ is empty"
    stale = sorted(n for n in source.keys() | copies.keys() if source.get(n) != copies.get(n))
    assert not stale, f"run `make chart-crds`: {stale} differ between crds/ and the chart"


@pytest.mark.integration
def test_rendered_crds_are_the_source_with_a_keep_policy(helm: Path) -> None:
    docs = {d["metadata"]["name"]: d for d in by_kind(render(helm), "CustomResourceDefinition")}
    for path in (REPO / "crds").glob("*.yaml"):
        src = yaml.safe_load(path.read_text())
        crd = docs[src["metadata"]["name"]]
        assert crd["spec"] == src["spec"], f"{path.name} changed on the way through the chart"
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    no_keep = render(helm, sets=("crds.keep=false",))
    for crd in by_kind(no_keep, "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    assert not by_kind(render(helm, sets=("crds.install=false",)), "CustomResourceDefinition")


# --------------------------------------------------------------------------- RBAC


@pytest.mark.integration
@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_rbac_is_least_privilege(helm: Path, values: Path | None) -> None:
    docs = render(helm, *([values] if values else []))
    roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    # all-on has the chart's Redis: its auth Secret, readable by name only (a Role there).
    redis_auth = {"ms-modelseal-operator-redis-auth"} if values else set()
    assert {r["metadata"]["name"] for r in roles} == {
        "ms-modelseal-kopf-cluster",
        "ms-modelseal-kopf",
        "ms-modelseal-operator",
        "ms-modelseal-operator-secrets",
        *redis_auth,
    }
    for role in roles:
        name = role["metadata"]["name"]
        for rule in role["rules"]:
            assert "*" not in rule["verbs"], name
            assert "*" not in rule["resources"], name
            assert "*" not in rule.get("apiGroups", []), name
            for danger in ("escalate", "bind", "impersonate"):
                assert danger not in rule["verbs"]
            if "secrets" in rule["resources"] and name == "ms-modelseal-operator-redis-auth":
                assert role["kind"] == "Role" and role["metadata"]["namespace"] == RELEASE_NS
                assert rule == {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": ["ms-modelseal-redis-auth"],
                    "verbs": ["get"],
                }
            elif "secrets" in rule["resources"]:
                assert name == "ms-modelseal-operator-secrets", name
                assert rule["resources"] == ["secrets"]
                assert not {"list", "watch"} & set(rule["verbs"]), "Secrets by name only"
    cluster_role = next(r for r in roles if r["metadata"]["name"] == "ms-modelseal-kopf-cluster")
    for rule in cluster_role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, "cluster-wide part is read-only"


@pytest.mark.integration
def test_no_cluster_wide_secret_access_by_default(helm: Path) -> None:
    docs = render(helm)
    crbs = {b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")}
    assert crbs == {"ms-modelseal-kopf-cluster", "ms-modelseal-kopf", "ms-modelseal-operator"}
    assert not by_kind(docs, "RoleBinding")
    opted_in = render(helm, sets=("rbac.clusterWideSecretAccess=true",))
    assert "ms-modelseal-operator-secrets" in {
        b["roleRef"]["name"] for b in by_kind(opted_in, "ClusterRoleBinding")
    }


@pytest.mark.integration
def test_watch_namespaces_bind_only_there(helm: Path) -> None:
    docs = render(helm, ALL_ON)
    crbs = by_kind(docs, "ClusterRoleBinding")
    assert [b["roleRef"]["name"] for b in crbs] == ["ms-modelseal-kopf-cluster"]
    rbs = by_kind(docs, "RoleBinding")
    assert sorted((b["metadata"]["namespace"], b["roleRef"]["name"]) for b in rbs) == [
        ("models-a", "ms-modelseal-kopf"),
        ("models-a", "ms-modelseal-operator"),
        ("models-a", "ms-modelseal-operator-secrets"),
        ("models-b", "ms-modelseal-kopf"),
        ("models-b", "ms-modelseal-operator"),
        ("models-b", "ms-modelseal-operator-secrets"),
        (RELEASE_NS, "ms-modelseal-operator-redis-auth"),
    ]
    for b in by_kind(docs, "ValidatingAdmissionPolicyBinding"):
        values = b["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"]
        assert values == ["models-a", "models-b"]


@pytest.mark.integration
def test_redis_credentials_and_network_policy(helm: Path) -> None:
    """High 2: the operator learns where the chart's Redis credentials are (a name, never
    a value); Redis admits model pods only from the watched namespaces (by name), or from
    redis.clientNamespaceSelector when the whole cluster is watched."""
    docs = render(helm, ALL_ON)
    dep = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "ms-modelseal-operator"
    )
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELSEAL_REDIS_AUTH_SECRET"]["value"] == "ms-modelseal-redis-auth"
    assert env["MODELSEAL_REDIS_AUTH_SECRET_NAMESPACE"]["value"] == RELEASE_NS
    secret = next(d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-auth"))
    assert secret["metadata"]["name"] == "ms-modelseal-redis-auth"
    password = secret["stringData"]["password"]
    assert password not in json.dumps(dep)

    def redis_peers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        (policy,) = [
            d
            for d in by_kind(docs, "NetworkPolicy")
            if d["metadata"]["name"] == "ms-modelseal-redis"
        ]
        (rule,) = policy["spec"]["ingress"]
        # issue 14: the operator (its own namespace) reads the counters for status.usage
        operator = [p for p in rule["from"] if "namespaceSelector" not in p]
        assert [
            p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in operator
        ] == ["operator"]
        return [p for p in rule["from"] if "namespaceSelector" in p]

    (peer,) = redis_peers(docs)
    assert peer["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": ["models-a", "models-b"],
            }
        ]
    }
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "modelseal-model"
    # cluster-wide: every namespace unless a selector is given
    (peer,) = redis_peers(render(helm, sets=("redis.enabled=true",)))
    assert peer["namespaceSelector"] == {}
    labelled = render(
        helm,
        sets=("redis.enabled=true", "redis.clientNamespaceSelector.matchLabels.team=models"),
    )
    (peer,) = redis_peers(labelled)
    assert peer["namespaceSelector"] == {"matchLabels": {"team": "models"}}
    # no Redis: no Role for its Secret, no setting
    plain = render(helm)
    assert not by_kind(plain, "Role")
    plain_dep = next(
        d for d in by_kind(plain, "Deployment") if d["metadata"]["name"] == "ms-modelseal-operator"
    )
    names = {e["name"] for e in plain_dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MODELSEAL_REDIS_AUTH_SECRET" not in names


# --------------------------------------------------------------------------- pods


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """The Pod Security `restricted` rules that a pod spec can break, checked statically.

    The real API server checks them again in test_chart_install.py.
    """
    bad: list[str] = []
    pod_sc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            bad.append(flag)
    for vol in spec.get("volumes", []):
        allowed = {"name", "emptyDir", "secret", "configMap", "projected", "persistentVolumeClaim"}
        if set(vol) - allowed:
            bad.append(f"volume {vol['name']}: {set(vol) - allowed}")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            bad.append(f"{name}: capabilities.drop")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: capabilities.add")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            bad.append(f"{name}: runAsNonRoot")
        if (sc.get("runAsUser", pod_sc.get("runAsUser")) or 1) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile")
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            bad.append(f"{name}: hostPort")
        # Our own bar, above `restricted`: read-only root and resource limits on memory.
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{name}: readOnlyRootFilesystem")
        if "memory" not in c.get("resources", {}).get("limits", {}):
            bad.append(f"{name}: no memory limit")
    return bad


@pytest.mark.integration
@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_pods_meet_restricted_statically(helm: Path, values: Path | None) -> None:
    docs = render(helm, *([values] if values else []))
    specs = list(pod_specs(docs))
    assert specs
    for name, spec in specs:
        assert restricted_violations(spec) == [], name


# --------------------------------------------------------------------------- admission


@pytest.mark.integration
def test_admission_policies_are_bound_and_name_modelseal(helm: Path) -> None:
    docs = render(helm, ALL_ON)
    policies = {p["metadata"]["name"]: p for p in by_kind(docs, "ValidatingAdmissionPolicy")}
    bindings = {b["spec"]["policyName"] for b in by_kind(docs, "ValidatingAdmissionPolicyBinding")}
    assert set(policies) == bindings
    for b in by_kind(docs, "ValidatingAdmissionPolicyBinding"):
        if "paramKind" in policies[b["spec"]["policyName"]]["spec"]:
            assert b["spec"]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Allow"}
    assert {
        "ms-modelseal-interactive-access",
        "ms-modelseal-model-pods",
        "ms-modelseal-model-replicasets",
        "ms-modelseal-sa-borrowing-pods",
        "ms-modelseal-sa-borrowing-workloads",
        "ms-modelseal-sa-borrowing-tokens",
        "ms-modelseal-owned-objects",
        "ms-modelseal-model-services",
        "ms-modelseal-model-networkpolicies",
        "ms-modelseal-output-policy",
        "ms-modelseal-tenancy",
    } == set(policies)
    # Kept on `helm uninstall`, like the CRDs: the models outlive it.
    for doc in by_kind(docs, "ValidatingAdmissionPolicy") + by_kind(
        docs, "ValidatingAdmissionPolicyBinding"
    ):
        assert doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for name, p in policies.items():
        if name.endswith(("output-policy", "tenancy")):
            # No parameters: these guards can always run (and fail closed).
            assert p["spec"]["failurePolicy"] == "Fail"
        else:
            # Fail-open only while the guard cannot run: see admission.failurePolicy.
            assert p["spec"]["failurePolicy"] == "Ignore"
            # The ProtectedModels of the request's namespace are the parameters.
            assert p["spec"]["paramKind"] == {
                "apiVersion": "modelseal.io/v1alpha1",
                "kind": "ProtectedModel",
            }
        assert p["spec"]["matchConditions"][0]["name"] == "not-break-glass"
        for v in p["spec"]["validations"]:
            assert v["messageExpression"].startswith("'Modelseal: ")
    ops = {
        tuple(r["operations"]): r["resources"]
        for r in policies["ms-modelseal-interactive-access"]["spec"]["matchConstraints"][
            "resourceRules"
        ]
    }
    assert ops == {
        ("CONNECT",): [
            "pods/exec",
            "pods/attach",
            "pods/portforward",
            "pods/proxy",
            "services/proxy",
        ],
        ("UPDATE",): ["pods/ephemeralcontainers"],
    }


@pytest.mark.integration
def test_model_service_account_name_is_one_helper(helm: Path) -> None:
    """Every guard that needs the model's ServiceAccount name computes it the same way (the
    operator's: <model>-<first 8 of the ProtectedModel's uid>), never from the name alone."""
    from modelseal.render.names import names_for

    policies = by_kind(render(helm), "ValidatingAdmissionPolicy")
    exprs = {
        v["expression"]
        for p in policies
        for v in p["spec"].get("variables", [])
        if v["name"] == "modelServiceAccount"
    }
    assert exprs == {"params.metadata.name + '-' + params.metadata.uid.substring(0, 8)"}
    uid = "0b8e3c1a-5d2f-4e6a-9c7b-1f2e3d4c5b6a"
    assert names_for("ns", "digits", uid).service_account == "digits-0b8e3c1a"
    users = [
        p["metadata"]["name"]
        for p in policies
        if "variables.modelServiceAccount" in json.dumps(p["spec"])
    ]
    assert len(users) >= 5, users
    # No guard compares a ServiceAccount with the model's bare name (the guessable one).
    bare = re.compile(r"serviceAccount\w* [!=]= params\.metadata\.name(?!\s*\+)")
    for p in policies:
        assert not bare.search(json.dumps(p["spec"])), p["metadata"]["name"]


@pytest.mark.integration
def test_guards_know_every_label_of_model_pods(helm: Path) -> None:
    """The Service and NetworkPolicy guards decide whether a selector can reach a model's
    pods from the label keys (and known values) those pods carry: they must be exactly what
    the operator renders (the golden files, checked against the renderer by
    tests/golden), plus the ReplicaSet's pod-template-hash."""
    policies = {
        p["metadata"]["name"]: p for p in by_kind(render(helm), "ValidatingAdmissionPolicy")
    }
    for name in ("ms-modelseal-model-services", "ms-modelseal-model-networkpolicies"):
        variables = {v["name"]: v["expression"] for v in policies[name]["spec"]["variables"]}
        keys = set(re.findall(r"'([^']+)'", variables["podLabelKeys"]))
        known = {
            k: v or None
            for k, _, v in re.findall(
                r"'([^']+)': ('([^']*)'|string\(params\.metadata\.name\))",
                variables["podLabels"],
            )
        }
        assert known and set(known) <= keys, (known, keys)
        goldens = sorted((REPO / "tests" / "golden" / "cases").glob("*/expected.yaml"))
        assert goldens
        for golden in goldens:
            for obj in yaml.safe_load(golden.read_text())["objects"]:
                if obj["kind"] != "Deployment":
                    continue
                model = obj["metadata"]["name"]
                labels = obj["spec"]["template"]["metadata"]["labels"]
                assert set(labels) | {"pod-template-hash"} == keys, (golden, labels)
                for key, value in known.items():
                    assert labels[key] == (value or model), (golden, key)


@pytest.mark.integration
def test_admission_keep_off_drops_the_annotation(helm: Path) -> None:
    docs = render(helm, sets=("admission.keep=false",))
    for doc in by_kind(docs, "ValidatingAdmissionPolicy"):
        assert "helm.sh/resource-policy" not in doc["metadata"].get("annotations", {})


@pytest.mark.integration
def test_admission_off_renders_no_policy(helm: Path) -> None:
    docs = render(helm, sets=("admission.enabled=false",))
    assert not by_kind(docs, "ValidatingAdmissionPolicy")


# --------------------------------------------------------------------------- dashboard


def known_metric_series() -> set[str]:
    """Every series name the gateway and the operator export."""
    from prometheus_client import CollectorRegistry

    from modelseal.gateway.metrics import GatewayMetrics
    from modelseal.handlers.licenses_usage import UsageMetrics
    from modelseal.handlers.metrics import Metrics as OperatorMetrics

    registry = CollectorRegistry()
    GatewayMetrics(registry)
    OperatorMetrics(registry)
    UsageMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads((CHART / "files" / "dashboards" / "modelseal.json").read_text())
    assert dash["uid"] == "modelseal-overview"
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t] + [
        v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)
    ]
    used = {m for e in exprs for m in re.findall(r"\bmodelseal_[a-z_]+\b", e)}
    assert any(m.startswith("modelseal_gateway_") for m in used)
    assert any(m.startswith("modelseal_operator_") for m in used)
    unknown = used - known_metric_series()
    assert not unknown, f"dashboard queries metrics nobody exports: {sorted(unknown)}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # issue 14: usage and remaining quota per tenant, from the licenses' usage gauges
    assert {"modelseal_license_requests_used", "modelseal_license_requests_remaining"} <= used


# --------------------------------------------------------------------------- examples


@pytest.mark.integration
def test_argocd_example_installs_this_chart_with_valid_values(helm: Path, tmp_path: Path) -> None:
    apps = list(yaml.safe_load_all((REPO / "examples" / "argocd-application.yaml").read_text()))
    chart_app = next(a for a in apps if a["spec"]["source"]["path"] == "charts/modelseal")
    assert chart_app["kind"] == "Application"
    assert "ServerSideApply=true" in chart_app["spec"]["syncPolicy"]["syncOptions"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(chart_app["spec"]["source"]["helm"]["valuesObject"]))
    docs = render(helm, values, release=chart_app["spec"]["source"]["helm"]["releaseName"])
    assert by_kind(docs, "PodMonitor")
    tenants = [a for a in apps if a["spec"]["source"]["path"] == "examples"]
    assert tenants and tenants[0]["spec"]["syncPolicy"]["automated"]["prune"] is False
