"""A big bundle from the real S3 test server comes in parallel ranged GETs, in order (from
the first byte, or after a window of the first GET), and unseals; a small one stays one
stream. (The threshold and part size are lowered so that a
few MiB exercise the path.)"""

from __future__ import annotations

import os
from typing import Any

import pytest

from modelseal.sources import open_source, ranged

pytestmark = pytest.mark.integration

KiB = 1024


def read_all(stream: Any) -> bytes:
    out = bytearray()
    buf = bytearray(70_001)
    while n := stream.readinto(buf):
        out += buf[:n]
    return bytes(out)


def test_s3_ranged_and_plain(
    s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranged, "MIN_RANGED_SIZE", 1024 * KiB)
    monkeypatch.setattr(ranged, "DEFAULT_PART_SIZE", 256 * KiB)
    monkeypatch.setattr(ranged, "WAIT_FRACTION", 0.0)  # ranged from the first byte
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    big, small = os.urandom(3 * 1024 * KiB + 11), os.urandom(100 * KiB)
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="big.mseal", Body=big)
    client.put_object(Bucket=s3_bucket, Key="small.mseal", Body=small)
    with open_source(
        f"s3://{s3_bucket}/big.mseal", s3_endpoint_url=s3_server.endpoint_url
    ) as stream:
        assert stream.buffer_bytes == (ranged.DEFAULT_PARALLEL + 1) * 256 * KiB
        assert read_all(stream) == big
        assert stream.reader.switched_at == 0
    # one window from the first GET, one sample (parts at once), then ranges from there
    # (any sampled rate counts as faster here)
    monkeypatch.setattr(ranged, "WAIT_FRACTION", 1e-12)
    monkeypatch.setattr(ranged, "PROBE_BYTES", 300 * KiB)
    monkeypatch.setattr(ranged, "RANGED_MARGIN", 0.0)
    with open_source(
        f"s3://{s3_bucket}/big.mseal", s3_endpoint_url=s3_server.endpoint_url
    ) as stream:
        assert read_all(stream) == big
        switched = stream.reader.switched_at
        assert switched is not None and 300 * KiB <= switched < len(big)
        assert stream.reader.sampled is not None and stream.reader.sampled[1] > 0
    with open_source(
        f"s3://{s3_bucket}/small.mseal", s3_endpoint_url=s3_server.endpoint_url
    ) as stream:
        assert stream.buffer_bytes == 0
        assert read_all(stream) == small


def test_s3_body_is_read_straight_into_the_buffer(s3_server: Any, s3_bucket: str) -> None:
    """GetObject's body is read by the http.client response under urllib3 (no copy); a
    content-encoded body keeps urllib3's reader, and both give the stored bytes."""
    import http.client

    from modelseal.sources.s3 import direct_readinto

    data = os.urandom(300 * KiB + 7)
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="plain.mseal", Body=data)
    client.put_object(Bucket=s3_bucket, Key="encoded.mseal", Body=data, ContentEncoding="gzip")
    for key, direct in (("plain.mseal", True), ("encoded.mseal", False)):
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"]
        try:
            read = direct_readinto(body)
            assert isinstance(getattr(read, "__self__", None), http.client.HTTPResponse) is direct
            out = bytearray()
            view = memoryview(bytearray(65_536))
            while n := read(view):
                out += view[:n]
        finally:
            body.close()
        assert bytes(out) == data, key


def test_s3_wrong_credentials_are_a_clear_error(
    s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source signs with what the environment gives; the server's refusal is named,
    and the secret appears nowhere in it."""
    from modelseal.sources import SourceError

    s3_server.client().put_object(Bucket=s3_bucket, Key="b.mseal", Body=b"x" * 1000)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "forged-secret-value")
    # boto3's default session keeps the credentials it first found in this process
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with pytest.raises(SourceError) as refused:
        open_source(f"s3://{s3_bucket}/b.mseal", s3_endpoint_url=s3_server.endpoint_url)
    assert "S3 refused: SignatureDoesNotMatch" in str(refused.value)
    assert "forged-secret-value" not in str(refused.value)
