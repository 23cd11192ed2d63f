"""Audit trail: hash-chained JSON records, HMAC-signed checkpoints, sinks and verification."""

from modelseal.audit.chain import Chain
from modelseal.audit.log import AuditLog, AuditOverflow
from modelseal.audit.sinks import FileSink, Sink, StdoutSink, WebhookSink
from modelseal.audit.verify import VerifyResult, verify_file, verify_lines

__all__ = [
    "AuditLog",
    "AuditOverflow",
    "Chain",
    "FileSink",
    "Sink",
    "StdoutSink",
    "VerifyResult",
    "WebhookSink",
    "verify_file",
    "verify_lines",
]
