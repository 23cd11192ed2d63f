"""Verify an audit log: the hash chain, sequence numbers and the signed checkpoints.

``verify_lines`` reads the log line by line and stops at the first broken line, naming it
(1-based line number, its ``seq`` when readable) and why. Deleting the *last* lines of a
log cannot be seen from the chain alone; checkpoints bound it: lines after the last
checkpoint are reported as not covered by a signature (an error with ``strict``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelseal.audit.chain import ZERO_HASH, checkpoint_mac, key_id, record_hash


@dataclass(slots=True)
class VerifyResult:
    ok: bool
    lines: int = 0
    records: int = 0  # request and event lines
    checkpoints: int = 0
    signed_checkpoints: int = 0
    chains: int = 0
    uncovered_tail: int = 0  # lines after the last checkpoint
    broken_line: int | None = None
    broken_seq: int | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.ok:
            seq = f" (seq {self.broken_seq})" if self.broken_seq is not None else ""
            return f"BROKEN at line {self.broken_line}{seq}: {self.reason}"
        text = (
            f"OK: {self.lines} lines, {self.records} records, {self.checkpoints} checkpoints "
            f"({self.signed_checkpoints} signatures verified)"
        )
        return text + "".join(f"\nwarning: {w}" for w in self.warnings)


def _fail(res: VerifyResult, line: int, seq: Any, reason: str) -> VerifyResult:
    res.ok = False
    res.broken_line = line
    res.broken_seq = seq if isinstance(seq, int) else None
    res.reason = reason
    return res


def verify_lines(
    lines: Iterable[bytes], key: bytes | None = None, *, strict: bool = False
) -> VerifyResult:
    res = VerifyResult(ok=True)
    expect_seq = 0
    prev = ZERO_HASH
    since_checkpoint = 0
    want_key_id = key_id(key) if key else None
    for number, raw in enumerate(lines, start=1):
        res.lines = number
        text = raw.rstrip(b"\n")
        try:
            body = json.loads(text)
        except ValueError:
            return _fail(res, number, None, "not a JSON line (edited or truncated)")
        if not isinstance(body, dict):
            return _fail(res, number, None, "not a JSON object")
        seq = body.get("seq")
        kind = body.get("type")
        if body.get("hash") != record_hash(body):
            return _fail(res, number, seq, "hash does not match the content: the line was edited")
        if kind == "genesis" and seq == 0 and body.get("prev") == ZERO_HASH:
            if number != 1:
                return _fail(res, number, seq, "a new chain starts in the middle of the log")
            res.chains += 1
        elif seq != expect_seq:
            if isinstance(seq, int) and seq > expect_seq:
                why = f"expected seq {expect_seq}: {seq - expect_seq} line(s) missing before it"
            else:
                why = f"expected seq {expect_seq}: lines are out of order or repeated"
            return _fail(res, number, seq, why)
        elif body.get("prev") != prev:
            return _fail(
                res, number, seq, "prev does not match the line before: lines were reordered"
            )
        if number == 1 and kind != "genesis":
            return _fail(res, number, seq, "the log does not start with a genesis line")
        if kind == "checkpoint":
            res.checkpoints += 1
            since_checkpoint = 0
            mac = body.get("mac")
            if key is not None:
                if body.get("key_id") != want_key_id:
                    return _fail(res, number, seq, "checkpoint was signed with another key")
                if not isinstance(mac, str) or not hmac.compare_digest(
                    mac, checkpoint_mac(key, body)
                ):
                    return _fail(res, number, seq, "checkpoint signature does not verify: forged")
                res.signed_checkpoints += 1
        elif kind in ("request", "event"):
            res.records += 1
            since_checkpoint += 1
        elif kind != "genesis":
            return _fail(res, number, seq, f"unknown line type {kind!r}")
        expect_seq = seq + 1
        prev = body["hash"]
    res.uncovered_tail = since_checkpoint
    if res.lines == 0:
        res.warnings.append("the log is empty")
    if key is None and res.checkpoints:
        res.warnings.append("no key given: checkpoint signatures were not checked")
    if since_checkpoint:
        msg = (
            f"the last {since_checkpoint} record(s) come after the last checkpoint and are "
            "not covered by a signature (a gateway that crashed leaves such a tail)"
        )
        if strict:
            return _fail(res, res.lines, expect_seq - 1, msg)
        res.warnings.append(msg)
    return res


def verify_file(path: Path, key: bytes | None = None, *, strict: bool = False) -> VerifyResult:
    with path.open("rb") as fh:
        return verify_lines(fh, key, strict=strict)
