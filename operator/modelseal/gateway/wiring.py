"""The gateway's parts that its settings choose: the quota store (embedded or Redis, with
the Redis credentials read from files) and the audit sink (file, webhook or stdout)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from modelseal.audit.keyfile import read_key
from modelseal.audit.sinks import FileSink, Sink, StdoutSink, WebhookSink
from modelseal.config import Settings
from modelseal.store.base import CounterStore
from modelseal.store.embedded import EmbeddedStore
from modelseal.store.redis import RedisStore

log = logging.getLogger("modelseal.gateway")


def redis_credentials(settings: Settings) -> tuple[str | None, str | None]:
    """(ACL user, password) for the quota Redis, each read from its file (mounted from a
    Secret). A password in ``redis_url`` (an environment variable, visible in the pod
    spec) is refused; so is a user name without a password."""
    if urlsplit(settings.redis_url).password is not None:
        raise ValueError(
            "redis_url holds a password: put it in a file mounted from a Secret and name "
            "that file in redis_password_file (MODELSEAL_REDIS_PASSWORD_FILE)"
        )
    password = username = None
    if settings.redis_password_file is not None:
        password = read_key(settings.redis_password_file).decode()
    if settings.redis_username_file is not None:
        username = read_key(settings.redis_username_file).decode()
        if password is None:
            raise ValueError("redis_username_file needs redis_password_file")
    if password is None:
        log.warning(
            "quota store redis without redis_password_file: whoever reaches Redis can "
            "change every tenant's counters"
        )
    return username, password


def build_store(settings: Settings) -> CounterStore:
    if settings.quota_store == "redis":
        username, password = redis_credentials(settings)
        return RedisStore(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            timeout_s=settings.redis_timeout_s,
            lease_ms=int(settings.quota_lease_s * 1000),
            username=username,
            password=password,
        )
    return EmbeddedStore(settings.quota_state_dir, fsync_interval_s=settings.quota_fsync_interval_s)


def build_sink(settings: Settings) -> Sink:
    if settings.audit_sink == "file":
        return FileSink(settings.audit_file)
    if settings.audit_sink == "webhook":
        if not settings.audit_webhook_url:
            raise ValueError("audit_sink=webhook needs audit_webhook_url")
        token = None
        if settings.audit_webhook_token_file is not None:
            token = read_key(settings.audit_webhook_token_file).decode()
        return WebhookSink(settings.audit_webhook_url, token=token)
    return StdoutSink()
