"""Verify an audit log: the hash chain, sequence numbers and the signed checkpoints.

``verify_lines`` reads the log line by line and stops at the first broken line, naming it
(1-based line number, its ``seq`` when readable) and why.

Restarts: a genesis line in the middle of the log is accepted only when it links to the
run before it (``after``: chain, seq, hash; see ``modelseal.audit.state``) and that line is
in the log: the last line before it, or one of the lines just before (they were written by
a run killed before it recorded them; none of their requests had been answered). A link
beyond the last line means lines were deleted.

Truncation: deleting the *last* lines of a log cannot be seen from the chain alone, not
even with signed checkpoints (a log cut right after one verifies). So a gateway ends its
log with a signed ``shutdown`` checkpoint (the seal) and, while it runs, writes a signed
checkpoint every ``audit_checkpoint_interval_s`` seconds, idle or not. ``require_seal``
fails a log whose last line is not a seal; ``max_age_s`` accepts instead a log whose last
signed checkpoint is that recent (a gateway still running). Lines after the last
checkpoint are reported as not covered by a signature (an error with ``strict``). What
remains: whole runs after a clean shutdown can be dropped from the end without a trace in
the log itself; compare its last ``seq`` with the gateway's
``modelseal_gateway_audit_records_total`` or pod restarts for that.
"""

from __future__ import annotations

import hmac
import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelseal.audit.chain import ZERO_HASH, checkpoint_mac, key_id, record_hash

#: How many of the last lines of a chain a restart's link may name (a batch or two).
LINK_WINDOW = 4096


@dataclass(slots=True)
class VerifyResult:
    ok: bool
    lines: int = 0
    records: int = 0  # request and event lines
    checkpoints: int = 0
    signed_checkpoints: int = 0
    chains: int = 0
    uncovered_tail: int = 0  # lines after the last checkpoint
    restarts: int = 0  # genesis lines linked to the run before them
    unacknowledged: int = 0  # lines after a restart's link (written, never answered)
    sealed: bool = False  # the last line is a shutdown checkpoint
    last_checkpoint_ts: str | None = None
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


def _age_s(ts: str | None, now: datetime) -> float | None:
    if not ts:
        return None
    try:
        when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - when).total_seconds()


def _check_link(
    res: VerifyResult, body: dict[str, Any], recent: OrderedDict[int, str], last_seq: int
) -> str | None:
    """Why a genesis in the middle of the log does not continue the run before it."""
    after = body.get("after")
    if not isinstance(after, dict):
        return "a new chain starts in the middle of the log"
    seq, digest = after.get("seq"), after.get("hash")
    if not isinstance(seq, int) or seq < 0:
        return "a restart's link names no line"
    if seq > last_seq:
        return (
            f"a restart links to seq {seq} but the run before it ends at seq {last_seq}: "
            f"{seq - last_seq} line(s) deleted"
        )
    if recent.get(seq) != digest:
        return f"a restart links to seq {seq}, which is not the line there: lines were replaced"
    res.restarts += 1
    res.unacknowledged += last_seq - seq
    if last_seq > seq:
        res.warnings.append(
            f"{last_seq - seq} line(s) after seq {seq} were written by a run that was killed "
            "before it acknowledged them (none of their requests was answered)"
        )
    return None


def verify_lines(
    lines: Iterable[bytes],
    key: bytes | None = None,
    *,
    strict: bool = False,
    require_seal: bool = False,
    max_age_s: float | None = None,
    now: datetime | None = None,
) -> VerifyResult:
    res = VerifyResult(ok=True)
    expect_seq = 0
    prev = ZERO_HASH
    since_checkpoint = 0
    want_key_id = key_id(key) if key else None
    recent: OrderedDict[int, str] = OrderedDict()  # seq -> hash of this chain's last lines
    last_kind: Any = None
    last_reason: Any = None
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
                why = _check_link(res, body, recent, expect_seq - 1)
                if why is not None:
                    return _fail(res, number, seq, why)
            elif isinstance(body.get("after"), dict):
                res.warnings.append("the log starts after an earlier run (a restart's link)")
            recent.clear()
            since_checkpoint = 0
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
            res.last_checkpoint_ts = body.get("ts") if isinstance(body.get("ts"), str) else None
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
        recent[seq] = prev
        if len(recent) > LINK_WINDOW:
            recent.popitem(last=False)
        last_kind, last_reason = kind, body.get("reason")
    res.uncovered_tail = since_checkpoint
    res.sealed = last_kind == "checkpoint" and last_reason == "shutdown"
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
    if res.sealed or (not require_seal and max_age_s is None):
        return res
    age = _age_s(res.last_checkpoint_ts, now or datetime.now(UTC))
    if max_age_s is not None and age is not None and age <= max_age_s:
        return res
    what = "no checkpoint" if age is None else f"its last checkpoint is {age:.0f}s old"
    return _fail(
        res,
        res.lines,
        expect_seq - 1,
        f"the log does not end with a shutdown seal and {what}: it was truncated, or its "
        "gateway crashed (or still runs: --max-age)",
    )


def verify_file(
    path: Path,
    key: bytes | None = None,
    *,
    strict: bool = False,
    require_seal: bool = False,
    max_age_s: float | None = None,
) -> VerifyResult:
    with path.open("rb") as fh:
        return verify_lines(fh, key, strict=strict, require_seal=require_seal, max_age_s=max_age_s)
