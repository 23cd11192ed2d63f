"""Debian's nginx on 127.0.0.1 as a child process, serving one folder (for `make bench-ready`).

Its own config, pid file, logs and temp folders live in a work folder; the packaged service
is not used. `sendfile` on, no access log, one worker per CPU: the fastest plain static
server Debian ships. With `tls=True` it serves https with a certificate from a CA made here
(openssl), and `ca_file` is that CA for the clients.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from modelseal_devenv.common import (
    LOOPBACK,
    ChildServer,
    ManagedProcess,
    StartError,
    free_port,
    wait_until,
)

NGINX = "/usr/sbin/nginx"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_tls(workdir: Path) -> tuple[Path, Path, Path]:
    """(CA cert, server cert, server key) for 127.0.0.1, made with openssl."""
    ca_key, ca_crt = workdir / "ca.key", workdir / "ca.crt"
    key, csr, crt = workdir / "server.key", workdir / "server.csr", workdir / "server.crt"
    ext = workdir / "server.ext"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key))
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "2",
        "-subj", "/CN=modelseal bench CA", "-out", str(ca_crt),
    )  # fmt: skip
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={LOOPBACK}", "-out", str(csr))
    ext.write_text(f"subjectAltName=IP:{LOOPBACK}\nbasicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    return ca_crt, crt, key


class NginxServer(ChildServer):
    """nginx serving `root` at http(s)://127.0.0.1:<free port>/."""

    def __init__(self, root: Path, *, tls: bool = False, workers: int = 0) -> None:
        if not Path(NGINX).is_file():
            raise StartError(f"{NGINX} not found: run devenv/install-bench-deps.sh")
        self.root = root.resolve()
        self.tls = tls
        self.workers = workers or len(os.sched_getaffinity(0))
        self._own_workdir = True
        self.workdir = Path(tempfile.mkdtemp(prefix="modelseal-nginx-"))
        self.port = free_port()
        self.ca_file: Path | None = None
        self._process: ManagedProcess | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    def _config(self) -> Path:
        w = self.workdir
        for sub in ("client", "proxy", "fastcgi", "uwsgi", "scgi"):
            (w / sub).mkdir(exist_ok=True)
        listen = f"{LOOPBACK}:{self.port}"
        tls = ""
        if self.tls:
            self.ca_file, crt, key = make_tls(w)
            listen += " ssl"
            tls = (
                f"ssl_certificate {crt}; ssl_certificate_key {key}; "
                "ssl_protocols TLSv1.3; ssl_session_cache off;"
            )
        conf = w / "nginx.conf"
        conf.write_text(
            f"""worker_processes {self.workers};
pid {w / "nginx.pid"};
error_log {w / "error.log"} warn;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    client_body_temp_path {w / "client"};
    proxy_temp_path {w / "proxy"};
    fastcgi_temp_path {w / "fastcgi"};
    uwsgi_temp_path {w / "uwsgi"};
    scgi_temp_path {w / "scgi"};
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen {listen};
        {tls}
        root {self.root};
        etag on;
    }}
}}
"""
        )
        return conf

    def _alive(self) -> bool:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None
        req = urllib.request.Request(f"{self.base_url}/", method="HEAD")  # noqa: S310 - loopback
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:  # noqa: S310
                return int(resp.status) < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500

    def start(self) -> NginxServer:
        if self.running:
            return self
        conf = self._config()
        self._process = ManagedProcess(
            "nginx",
            [
                NGINX,
                "-e",
                str(self.workdir / "error.log"),
                "-p",
                str(self.workdir),
                "-c",
                str(conf),
            ],
            self.workdir / "stdout.log",
            env={"PATH": "/usr/sbin:/usr/bin:/bin"},
            cwd=self.workdir,
        ).start()
        wait_until(self._alive, "nginx answers", 30, self._process)
        return self

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
