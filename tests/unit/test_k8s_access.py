"""Where the API server is and who we are (`modelseal.k8s.access`): kubeconfigs as kubectl
reads them, the Pod's ServiceAccount, token files, exec credential plugins. Pure file and
process handling; the client's calls against a real API server are in
tests/integration/test_k8s_client.py."""

from __future__ import annotations

import base64
import json
import ssl
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelseal.k8s import access as acc
from modelseal.k8s.access import AccessError, ClusterAccess, TokenSource

CA_PEM = b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n"
KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nsecret key material\n-----END PRIVATE KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(
    path: Path,
    *,
    user: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
    context: str = "ctx",
    namespace: str | None = None,
    name: str = "c",
) -> Path:
    ctx: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        ctx["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": context,
        "contexts": [{"name": context, "context": ctx}],
        "clusters": [{"name": name, "cluster": cluster or {"server": "https://k.example:6443"}}],
        "users": [{"name": name, "user": user if user is not None else {"token": "t0"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_token_and_ca_data(tmp_path: Path) -> None:
    cfg = kubeconfig(
        tmp_path / "config",
        cluster={"server": "https://k.example:6443/", "certificate-authority-data": b64(CA_PEM)},
        user={"token": "abc"},
        namespace="team-a",
    )
    a = acc.from_kubeconfig([cfg])
    assert a.server == "https://k.example:6443"
    assert a.ca_pem == CA_PEM and a.token == "abc" and a.namespace == "team-a"
    assert "context ctx" in a.source
    # secrets are never shown
    assert "abc" not in repr(a) and "not really" not in repr(a)


def test_files_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(CA_PEM)
    (tmp_path / "pki" / "client.key").write_bytes(KEY_PEM)
    (tmp_path / "pki" / "client.crt").write_bytes(CA_PEM)
    (tmp_path / "token").write_text("from-file\n")
    cfg = kubeconfig(
        tmp_path / "config",
        cluster={"server": "https://k:6443", "certificate-authority": "pki/ca.crt"},
        user={
            "client-certificate": "pki/client.crt",
            "client-key": str(tmp_path / "pki" / "client.key"),
            "tokenFile": "token",
        },
    )
    a = acc.from_kubeconfig([cfg])
    assert a.ca_pem == CA_PEM and a.certificate_pem == CA_PEM and a.key_pem == KEY_PEM
    assert a.token_file == tmp_path / "token"
    assert TokenSource(a).token() == "from-file"


def test_merged_files_first_value_wins(tmp_path: Path) -> None:
    first = kubeconfig(tmp_path / "a", user={"token": "first"}, context="one")
    second = kubeconfig(tmp_path / "b", user={"token": "second"}, context="two")
    a = acc.from_kubeconfig([first, second])
    assert a.token == "first" and "context one" in a.source
    # the named context of the second file, whose user "c" the first file defined first
    assert acc.from_kubeconfig([first, second], context_name="two").token == "first"


@pytest.mark.parametrize(
    ("user", "cluster", "context", "message"),
    [
        ({"auth-provider": {"name": "gcp"}}, None, "ctx", "legacy auth-provider"),
        ({"username": "u", "password": "p"}, None, "ctx", "basic auth"),
        ({"token": "t"}, {"certificate-authority-data": "x"}, "ctx", "has no server"),
        (
            {"token": "t"},
            {"server": "https://k", "certificate-authority-data": "!!"},
            "ctx",
            "base64",
        ),
        (
            {"token": "t"},
            {"server": "https://k", "certificate-authority": "/nope"},
            "ctx",
            "cannot read",
        ),
        ({"exec": {"args": ["x"]}}, None, "ctx", "without a command"),
    ],
)
def test_refused_kubeconfigs_say_why(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None, context: str, message: str
) -> None:
    cfg = kubeconfig(tmp_path / "config", user=user, cluster=cluster, context=context)
    with pytest.raises(AccessError, match=message):
        acc.from_kubeconfig([cfg])


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(AccessError, match="cannot read kubeconfig"):
        acc.from_kubeconfig([tmp_path / "absent"])
    (tmp_path / "bad").write_text("a: [")
    with pytest.raises(AccessError, match="not YAML"):
        acc.from_kubeconfig([tmp_path / "bad"])
    (tmp_path / "nocontext").write_text(yaml.safe_dump({"clusters": []}))
    with pytest.raises(AccessError, match="no current-context"):
        acc.from_kubeconfig([tmp_path / "nocontext"])
    cfg = kubeconfig(tmp_path / "config")
    with pytest.raises(AccessError, match="context 'other' is not defined"):
        acc.from_kubeconfig([cfg], context_name="other")


def service_account_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sa"
    d.mkdir()
    (d / "token").write_text("pod-token\n")
    (d / "ca.crt").write_bytes(CA_PEM)
    (d / "namespace").write_text("modelseal-system\n")
    return d


def test_in_cluster(tmp_path: Path) -> None:
    d = service_account_dir(tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    a = acc.in_cluster(env, d)
    assert a is not None
    assert a.server == "https://10.96.0.1:443" and a.ca_pem == CA_PEM
    assert a.namespace == "modelseal-system" and a.token_file == d / "token"
    assert TokenSource(a).token() == "pod-token"
    six = acc.in_cluster({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, d)
    assert six is not None and six.server == "https://[fd00::1]:443"
    assert acc.in_cluster({}, d) is None  # not in a Pod
    assert acc.in_cluster(env, tmp_path / "none") is None


def test_precedence_named_kubeconfig_then_pod_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = service_account_dir(tmp_path)
    monkeypatch.setattr(acc, "SERVICE_ACCOUNT_DIR", d)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    cfg = kubeconfig(tmp_path / "config", user={"token": "named"})
    assert acc.load_access(cfg).token == "named"
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent-first'}:{cfg}")
    with pytest.raises(AccessError, match="absent-first"):
        acc.load_access()  # every listed file must be readable, as kubectl wants
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    assert acc.load_access().token == "named"
    monkeypatch.delenv("KUBECONFIG")
    assert acc.load_access().source == "in-cluster"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(AccessError, match="no Kubernetes configuration"):
        acc.load_access()
    (tmp_path / ".kube").mkdir()
    kubeconfig(tmp_path / ".kube" / "config", user={"token": "home"})
    assert acc.load_access().token == "home"


def test_token_file_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("one")
    source = TokenSource(ClusterAccess(server="https://k", token_file=token))
    assert source.token() == "one"
    token.write_text("two")
    assert source.token() == "one"  # within the minute
    assert source.token(renew=True) == "two"  # a 401 reads it again at once
    token.write_text("three")
    monkeypatch.setattr(acc, "TOKEN_FILE_REREAD_S", 0.0)
    assert source.token() == "three"
    token.unlink()
    with pytest.raises(AccessError, match="cannot read the token file"):
        source.token(renew=True)


def plugin(tmp_path: Path, body: str) -> Path:
    """An exec credential plugin: a Python script that counts its runs."""
    script = tmp_path / "plugin.py"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_exec_plugin_token_renewed_before_expiry(tmp_path: Path) -> None:
    script = plugin(
        tmp_path,
        """
        import json, os, pathlib, sys
        runs = pathlib.Path(os.environ["RUNS"])
        n = int(runs.read_text() or 0) + 1 if runs.exists() else 1
        runs.write_text(str(n))
        info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
        assert info["kind"] == "ExecCredential" and sys.argv[1:] == ["get-token", "--x"]
        print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential",
            "status": {"token": f"tok-{n}", "expirationTimestamp": os.environ["EXPIRES"]}}))
        """,
    )
    runs = tmp_path / "runs"
    cfg = kubeconfig(
        tmp_path / "config",
        user={
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": "./plugin.py",
                "args": ["get-token", "--x"],
                "env": [
                    {"name": "RUNS", "value": str(runs)},
                    {"name": "EXPIRES", "value": "2999-01-01T00:00:00Z"},
                ],
            }
        },
    )
    a = acc.from_kubeconfig([cfg])
    assert a.exec_plugin is not None and a.exec_plugin.command == str(script)
    source = TokenSource(a)
    assert source.token() == "tok-1"
    assert source.token() == "tok-1"  # cached until near its expiry
    assert source.token(renew=True) == "tok-2"  # a 401 runs it again
    # an expiry within the renewal margin: run again on each use
    soon = acc.ExecPlugin(
        command=str(script),
        args=("get-token", "--x"),
        env=(("RUNS", str(runs)), ("EXPIRES", "2000-01-01T00:00:00Z")),
    )
    stale = TokenSource(ClusterAccess(server="https://k", exec_plugin=soon))
    assert stale.token() == "tok-3" and stale.token() == "tok-4"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("import sys; sys.stderr.write('no login'); sys.exit(3)", "failed \\(exit 3\\): no login"),
        ("print('not json')", "no ExecCredential status"),
        ("import json; print(json.dumps({'status': {}}))", "neither token nor cert"),
        (
            "import json; print(json.dumps({'status': {'token': 't', "
            "'expirationTimestamp': 'soon'}}))",
            "bad expirationTimestamp",
        ),
    ],
)
def test_exec_plugin_failures_say_why(tmp_path: Path, body: str, message: str) -> None:
    script = plugin(tmp_path, body)
    source = TokenSource(
        ClusterAccess(server="https://k", exec_plugin=acc.ExecPlugin(command=str(script)))
    )
    with pytest.raises(AccessError, match=message):
        source.token()
    missing = TokenSource(
        ClusterAccess(
            server="https://k", exec_plugin=acc.ExecPlugin(command=str(tmp_path / "absent"))
        )
    )
    with pytest.raises(AccessError, match="did not run"):
        missing.token()


def test_exec_plugin_client_certificate(tmp_path: Path) -> None:
    script = plugin(
        tmp_path,
        f"""
        import json
        print(json.dumps({{"status": {{"clientCertificateData": {CA_PEM.decode()!r},
            "clientKeyData": {KEY_PEM.decode()!r}}}}}))
        """,
    )
    source = TokenSource(
        ClusterAccess(server="https://k", exec_plugin=acc.ExecPlugin(command=str(script)))
    )
    cred = source.credential()
    assert cred is not None and cred.token is None and cred.expires is None
    assert cred.certificate_pem == CA_PEM and cred.key_pem == KEY_PEM
    assert source.token() is None


def make_pair(tmp_path: Path) -> tuple[bytes, bytes]:
    """A self-signed certificate and its key (openssl, as an operator's admin would)."""
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-subj", "/CN=test", "-days", "1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return crt.read_bytes(), key.read_bytes()


def test_tls_context_client_certificate_from_memory(tmp_path: Path) -> None:
    crt, key = make_pair(tmp_path)
    a = ClusterAccess(server="https://k", ca_pem=crt, certificate_pem=crt, key_pem=key)
    context = a.ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # the key went through a memfd, never a file in the work folder or /tmp
    assert not [p for p in tmp_path.iterdir() if p.name not in ("k.pem", "c.pem")]
    with pytest.raises(ssl.SSLError):
        ClusterAccess(server="https://k", certificate_pem=crt, key_pem=KEY_PEM).ssl_context()
    insecure = ClusterAccess(server="https://k", insecure=True).ssl_context()
    assert isinstance(insecure, ssl.SSLContext) and insecure.verify_mode == ssl.CERT_NONE
    assert ClusterAccess(server="http://127.0.0.1:8080").ssl_context() is False


def test_operator_role_keeps_the_generated_client_out() -> None:
    """The operator's modules and kopf load without the generated Kubernetes client (the
    operator role refuses to import it; kopf only tries)."""
    code = (
        "import sys; from modelseal.__main__ import keep_generated_client_out; "
        "keep_generated_client_out(); import kopf, modelseal.handlers.run; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kubernetes.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == []


def test_kopf_login_runs_an_exec_plugin_once(tmp_path: Path) -> None:
    """kopf's login (again at each 401) renews the plugin's credential: one run, whose
    token and expiry kopf gets."""
    from modelseal.handlers.operator import connection_info
    from modelseal.k8s.api import KubeClient

    runs = tmp_path / "runs"
    script = plugin(
        tmp_path,
        f"""
        import json, pathlib
        runs = pathlib.Path({str(runs)!r})
        n = int(runs.read_text()) + 1 if runs.exists() else 1
        runs.write_text(str(n))
        print(json.dumps({{"status": {{"token": f"tok-{{n}}",
            "expirationTimestamp": "2999-01-01T00:00:00Z"}}}}))
        """,
    )
    access = ClusterAccess(
        server="https://k:6443", ca_pem=CA_PEM, exec_plugin=acc.ExecPlugin(command=str(script))
    )
    info = connection_info(KubeClient(access))
    assert runs.read_text() == "1"
    assert info.token == "tok-1" and info.scheme == "Bearer" and info.server == access.server
    assert info.ca_data == CA_PEM and info.expiration is not None
    assert info.expiration.year == 2999
    assert connection_info(KubeClient(access)).token == "tok-2"  # each login renews


def test_api_errors_say_what_happened() -> None:
    """A Status answer, a proxy's non-JSON page, and a server that is not there."""
    import asyncio

    from modelseal.k8s import api as k8s
    from modelseal.k8s.api import ApiError, Kube, KubeClient, _error
    from modelseal_devenv.common import free_port

    status = _error(409, b'{"kind":"Status","reason":"AlreadyExists","message":"cm exists"}')
    assert (status.status, status.reason, status.message) == (409, "AlreadyExists", "cm exists")
    page = _error(502, b"<html>Bad Gateway</html>")
    assert (page.status, page.reason) == (502, "HTTP 502") and "Bad Gateway" in page.message
    bare = _error(403, b"")
    assert (bare.reason, bare.message) == ("Forbidden", "Forbidden")

    async def unreachable() -> ApiError:
        port = free_port()
        kube = Kube(KubeClient(ClusterAccess(server=f"http://127.0.0.1:{port}")), timeout_s=5)
        try:
            await kube.get(k8s.CONFIG_MAP, "ns", "cm")
        except ApiError as exc:
            return exc
        finally:
            await kube.close()
        raise AssertionError("a closed port answered")

    gone = asyncio.run(unreachable())
    assert gone.status == 0 and gone.reason == "Unreachable"
    assert "GET /api/v1/namespaces/ns/configmaps/cm" in gone.message
