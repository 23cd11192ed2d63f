"""The real Redis (Debian's redis-server) and S3 (the Versity S3 Gateway) test servers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pytest
import redis as redis_py
from botocore.exceptions import ClientError
from redis.backoff import NoBackoff
from redis.retry import Retry

from modelseal_devenv.redis import RedisServer
from modelseal_devenv.s3 import S3Server

pytestmark = pytest.mark.integration


def test_redis_ping_and_version(redis_server: RedisServer, redis_client: redis_py.Redis) -> None:
    assert redis_client.ping()
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.version.split(".")[0].isdigit()
    config = redis_client.config_get("appendonly")
    assert config["appendonly"] == "yes"
    with redis_py.Redis.from_url(redis_server.url) as by_url:
        assert by_url.incr("counter") == 1


def test_redis_counters_survive_restart_and_crash(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        port = server.port
        with server.client() as client:
            client.incrby("quota:tenant-a:day", 41)
            client.hset("license:a", mapping={"seats": "2"})
        server.stop()
        assert not server.running
        server.start()
        assert server.port == port
        with server.client() as client:
            assert client.incr("quota:tenant-a:day") == 42
        # SIGKILL: with appendfsync always, acknowledged writes are on disk
        server.kill()
        server.start()
        with server.client(decode_responses=True) as client:
            assert client.get("quota:tenant-a:day") == "42"
            assert client.hgetall("license:a") == {"seats": "2"}
    assert (tmp_path / "redis" / "data" / "appendonlydir").is_dir()


def test_redis_password(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="s3cret") as server:
        assert server.url.startswith("redis://:s3cret@127.0.0.1:")
        no_retry = Retry(NoBackoff(), 0)  # redis-py retries refused logins with back-off
        anonymous = redis_py.Redis(host="127.0.0.1", port=server.port, retry=no_retry)
        with anonymous, pytest.raises(redis_py.AuthenticationError):
            anonymous.set("k", "v")
        with redis_py.Redis.from_url(server.url) as client:
            assert client.set("k", "v")


def test_s3_put_get(s3_server: S3Server, s3_bucket: str) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    assert s3_server.version
    payload = bytes(range(256)) * 4096  # 1 MiB
    client = s3_server.client()
    try:
        client.put_object(Bucket=s3_bucket, Key="models/digits.msb", Body=payload)
        got = client.get_object(Bucket=s3_bucket, Key="models/digits.msb")["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        ranged = client.get_object(Bucket=s3_bucket, Key="models/digits.msb", Range="bytes=10-19")
        assert ranged["Body"].read() == payload[10:20]
        listed = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
        assert [(o["Key"], o["Size"]) for o in listed] == [("models/digits.msb", len(payload))]
        with pytest.raises(ClientError) as missing:
            client.get_object(Bucket=s3_bucket, Key="nope")
        assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    finally:
        client.close()


def test_s3_checks_signatures_and_keeps_objects_over_a_restart(tmp_path: Path) -> None:
    """The S3 server is no imitation: a request signed with another secret, or not signed,
    is refused; a GET pinned to another ETag fails (412); objects are files that outlive a
    restart."""
    import urllib.error
    import urllib.request

    with S3Server(tmp_path / "s3") as server:
        bucket = server.create_bucket("signed")
        client = server.client()
        put = client.put_object(Bucket=bucket, Key="k", Body=b"v" * 100)
        forged = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key="not-the-secret",
            region_name=server.region,
        )
        try:
            with pytest.raises(ClientError) as refused:
                forged.get_object(Bucket=bucket, Key="k")
            assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
            with pytest.raises(urllib.error.HTTPError) as anonymous:
                urllib.request.urlopen(f"{server.endpoint_url}/{bucket}/k", timeout=5)  # noqa: S310
            assert anonymous.value.code == 403
            with pytest.raises(ClientError) as stale:
                client.get_object(Bucket=bucket, Key="k", IfMatch='"0123456789abcdef"')
            assert stale.value.response["Error"]["Code"] == "PreconditionFailed"
            server.restart()
            again = client.get_object(Bucket=bucket, Key="k", IfMatch=put["ETag"])
            assert again["Body"].read() == b"v" * 100
        finally:
            client.close()
            forged.close()


def test_s3_multipart_upload(s3_server: S3Server, s3_bucket: str) -> None:
    part = b"x" * (5 * 1024 * 1024)
    client = s3_server.client()
    try:
        upload = client.create_multipart_upload(Bucket=s3_bucket, Key="big.bin")
        etags = []
        for number, chunk in enumerate((part, b"tail"), start=1):
            res = client.upload_part(
                Bucket=s3_bucket,
                Key="big.bin",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=chunk,
            )
            etags.append({"ETag": res["ETag"], "PartNumber": number})
        client.complete_multipart_upload(
            Bucket=s3_bucket,
            Key="big.bin",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": etags},
        )
        head = client.head_object(Bucket=s3_bucket, Key="big.bin")
        assert head["ContentLength"] == len(part) + 4
    finally:
        client.close()
