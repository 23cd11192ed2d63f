"""One JSON-lines log format for the three roles (operator, gateway, unsealer).

Every line is one JSON object with the same fields whichever process wrote it:

==============  =====================================================================
``ts``          when the record was made, UTC, ``2026-01-31T12:00:00.123456Z``
``level``       ``DEBUG`` / ``INFO`` / ``WARNING`` / ``ERROR`` / ``CRITICAL``
``logger``      the logger's name (``modelseal.gateway``, ``kopf.objects``, ...)
``msg``         the formatted message
``object``      only when the record is about a Kubernetes object (kopf's and the
                operator's ``extra={"k8s_ref": ...}``): its kind, namespace, name, uid
``state``,      only when the caller passed them as ``extra`` (the unsealer does)
``digest``,
``reason``
``error_type``  only when the record carries an exception: its class name
``exc``         only with ``tracebacks=True``: the formatted traceback
==============  =====================================================================

The unsealer logs without tracebacks: an exception's text could quote what it was
working on, and that process holds key material (docs/unsealer.md: no key bytes, tokens
or plaintext in its logs). Messages themselves never carry secrets; that is each
caller's duty, and the "no secrets in logs" tests check it.

(This module shadows nothing: the package uses absolute imports, so ``import logging``
below is the standard library's.)
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

#: ``extra`` keys copied onto the line when a record has them.
CONTEXT_KEYS = ("state", "digest", "reason")


def utc_timestamp(created: float) -> str:
    """A record's time as ISO 8601 UTC with microseconds and a ``Z``."""
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line (fields: see the module docstring)."""

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if ref is not None:
            out["object"] = ref
        for key in CONTEXT_KEYS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info and record.exc_info[0] is not None:
            out["error_type"] = record.exc_info[0].__name__
            if self.tracebacks:
                out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def json_handler(*, tracebacks: bool = True) -> logging.Handler:
    """A stderr handler writing :class:`JsonFormatter` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(tracebacks=tracebacks))
    return handler


def setup_logging(level: str, *, quiet: Iterable[str] = (), tracebacks: bool = True) -> None:
    """Make the root logger write JSON lines on stderr at `level`, and only there.

    `quiet` names chatty libraries that log their warnings only.
    """
    root = logging.getLogger()
    root.handlers[:] = [json_handler(tracebacks=tracebacks)]
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
