"""Bundle sources: local paths and file:// URIs, http(s) with a real local server (TLS with
a throw-away CA), stalls, errors, and credential redaction. S3 is covered against the real
S3 server in tests/integration/test_unsealer_sources.py."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelseal.sources import SourceError, open_source, redact, scheme_of

PAYLOAD = os.urandom(300_000)


def read_all(uri: str, **kw: object) -> bytes:
    out = bytearray()
    buf = bytearray(65536)
    with open_source(uri, **kw) as s:  # type: ignore[arg-type]
        while True:
            n = s.readinto(buf)
            if not n:
                break
            out += buf[:n]
    return bytes(out)


def test_local_path_and_file_uri(tmp_path: Path) -> None:
    f = tmp_path / "b.mseal"
    f.write_bytes(PAYLOAD)
    assert read_all(str(f)) == PAYLOAD
    assert read_all(f"file://{f}") == PAYLOAD
    assert read_all(f"file:{f}") == PAYLOAD
    with open_source(str(f)) as s:
        assert s.size == len(PAYLOAD)
        assert s.read(10) == PAYLOAD[:10]


def test_local_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="not a regular file"):
        open_source(str(tmp_path))
    with pytest.raises(SourceError, match="host"):
        open_source("file://otherhost/x")


def test_schemes() -> None:
    assert scheme_of("/a/b") == "file"
    assert scheme_of("rel/b") == "file"
    assert scheme_of("S3://b/k") == "s3"
    with pytest.raises(SourceError, match="unsupported"):
        open_source("ftp://host/x")
    with pytest.raises(SourceError, match="https"):
        open_source("http://127.0.0.1:1/x")
    with pytest.raises(SourceError, match="s3://bucket/key"):
        open_source("s3://bucket-only")


def test_redact_hides_credentials() -> None:
    uri = "https://user:pw@host.example:8443/p/b.mseal?X-Amz-Signature=abc&X-Amz-Credential=k"
    assert redact(uri) == "https://host.example:8443/p/b.mseal"
    assert redact("/plain/path") == "/plain/path"


# ----------------------------------------------------------------- a real HTTP server


class Handler(http.server.BaseHTTPRequestHandler):
    mode = "ok"

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        if self.path.startswith("/missing"):
            self.send_error(404, "no such bundle")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        if self.path.startswith("/stall"):
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            time.sleep(10)
            return
        if self.path.startswith("/cut"):
            self.wfile.write(PAYLOAD[:5000])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(PAYLOAD)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(context: ssl.SSLContext | None = None) -> Iterator[str]:
    server = Server(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_url() -> Iterator[str]:
    yield from serve()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelseal test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = tmp_path / "cert.pem"
    key_pem = tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_pem, key_pem)
    return ctx, cert_pem


def test_http_source(http_url: str) -> None:
    assert read_all(f"{http_url}/b.mseal", allow_http=True) == PAYLOAD


def test_http_errors(http_url: str) -> None:
    with pytest.raises(SourceError, match="HTTP 404"):
        open_source(f"{http_url}/missing?token=SECRET", allow_http=True)
    with pytest.raises(SourceError) as info:
        open_source("https://127.0.0.1:1/x?sig=SECRET", timeout_s=2)
    assert "SECRET" not in str(info.value)


def test_http_stall_times_out(http_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError, match="stalled"):
        read_all(f"{http_url}/stall", allow_http=True, timeout_s=0.5)
    assert time.monotonic() - started < 8  # the server stalls for 10 s: we gave up first


def test_http_connection_cut(http_url: str) -> None:
    """A connection closed before Content-Length bytes is an error, not a clean end."""
    with pytest.raises(SourceError, match="read failed after"):
        read_all(f"{http_url}/cut", allow_http=True, timeout_s=2)


def test_https_with_ca(tls: tuple[ssl.SSLContext, Path]) -> None:
    ctx, ca = tls
    for url in serve(ctx):
        assert read_all(f"{url}/b.mseal", ca_file=ca) == PAYLOAD
        with pytest.raises(SourceError, match="cannot fetch"):
            open_source(f"{url}/b.mseal", timeout_s=2)  # not trusted without the CA
