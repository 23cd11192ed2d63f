"""The gateway's usage export (``modelseal.audit.usage``) from its settings."""

from __future__ import annotations

from modelseal.audit.keyfile import read_key
from modelseal.audit.usage import UsageShipper
from modelseal.config import Settings


def check_usage_export(settings: Settings) -> None:
    """Refuse settings under which usage could not be exported as promised."""
    if settings.usage_export_url and settings.audit_sink != "file":
        raise ValueError(
            f"usage_export_url needs audit_sink=file (got {settings.audit_sink}): the audit "
            "file is the spool usage events are delivered from"
        )


def usage_shipper(settings: Settings) -> UsageShipper | None:
    """The shipper of this gateway's audit file, or None when no export is configured."""
    check_usage_export(settings)
    if not settings.usage_export_url:
        return None
    token = None
    if settings.usage_export_token_file is not None:
        token = read_key(settings.usage_export_token_file).decode()
    return UsageShipper(
        settings.audit_file,
        settings.usage_export_url,
        token=token,
        batch_max=settings.usage_export_batch_max,
        interval_s=settings.usage_export_interval_s,
        retry_max_s=settings.usage_export_retry_max_s,
        timeout_s=settings.usage_export_timeout_s,
    )
