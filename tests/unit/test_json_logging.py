"""modelseal.logging: one JSON line format for the operator, the gateway and the unsealer."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from modelseal.logging import JsonFormatter, setup_logging, utc_timestamp


def _record(
    msg: str = "hello %s", args: tuple[Any, ...] = ("world",), **extra: Any
) -> logging.LogRecord:
    record = logging.LogRecord("modelseal.test", logging.WARNING, __file__, 1, msg, args, None)
    record.created = 1_780_000_000.25  # 2026-05-28T20:26:40.250000Z
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def _line(formatter: JsonFormatter, record: logging.LogRecord) -> dict[str, Any]:
    text = formatter.format(record)
    assert "\n" not in text  # one record, one line
    out: dict[str, Any] = json.loads(text)
    return out


def test_the_common_fields_in_utc() -> None:
    assert _line(JsonFormatter(), _record()) == {
        "ts": "2026-05-28T20:26:40.250000Z",
        "level": "WARNING",
        "logger": "modelseal.test",
        "msg": "hello world",
    }


def test_timestamp_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert utc_timestamp(0.5) == "1970-01-01T00:00:00.500000Z"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"k8s_ref": {"kind": "ProtectedModel", "name": "m"}},
            {"object": {"kind": "ProtectedModel", "name": "m"}},
        ),
        (
            {"state": "ready", "digest": "sha256tree:ab"},
            {"state": "ready", "digest": "sha256tree:ab"},
        ),
        ({"reason": "revoked"}, {"reason": "revoked"}),
        ({"unrelated": "x"}, {}),
    ],
    ids=["object", "state-digest", "reason", "other-extra-ignored"],
)
def test_context_fields(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    line = _line(JsonFormatter(), _record(**extra))
    assert {k: v for k, v in line.items() if k not in ("ts", "level", "logger", "msg")} == expected


def _failed_record() -> logging.LogRecord:
    try:
        raise ValueError("the secret is s3cr3t")
    except ValueError:
        record = _record()
        record.exc_info = sys.exc_info()
    return record


def test_exception_with_traceback() -> None:
    line = _line(JsonFormatter(), _failed_record())
    assert line["error_type"] == "ValueError"
    assert "Traceback" in line["exc"]


def test_exception_without_traceback_names_only_the_type() -> None:
    line = _line(JsonFormatter(tracebacks=False), _failed_record())
    assert line["error_type"] == "ValueError"
    assert "exc" not in line
    assert "s3cr3t" not in json.dumps(line)


def test_values_json_cannot_encode_are_written_as_text() -> None:
    line = _line(JsonFormatter(), _record(reason=ValueError("x")))
    assert line["reason"] == "x"


def test_setup_logging_owns_the_root_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    chatty = logging.getLogger("modelseal.test.chatty")
    saved_chatty = chatty.level
    try:
        setup_logging("INFO", quiet=("modelseal.test.chatty",))
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        logging.getLogger("modelseal.test").info("one %d", 1)
        chatty.info("dropped")
        chatty.warning("kept")
        lines = [json.loads(t) for t in capsys.readouterr().err.splitlines()]
        assert [(x["logger"], x["msg"]) for x in lines] == [
            ("modelseal.test", "one 1"),
            ("modelseal.test.chatty", "kept"),
        ]
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        chatty.setLevel(saved_chatty)
