"""Where a chain stopped, kept outside the sink, so that the next run can link to it.

A sink that cannot be read back (stdout, a webhook) starts a new chain on every start of
the gateway. So that such chains still form one verifiable history, the writer keeps a
small state file (``audit_state_file``, in a volume that outlives the container: an
``emptyDir``) with the chain id, ``seq`` and ``hash`` of the last line the sink accepted.
It is replaced (write, then rename) after every batch the sink accepted and *before* the
requests of that batch are answered. A new run's genesis line names it as ``after``:
``{"chain", "seq", "hash"}``, and ``modelseal audit verify`` accepts a second genesis in
the middle of a log only when ``after`` names a line that is there (see
``modelseal.audit.verify``). If the process is killed between the sink write and the state
write, the link names a line a batch earlier: the lines after it were written but none of
their requests was answered.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)


class ChainPoint(NamedTuple):
    """The last line a sink accepted: its chain's id (None if unknown), seq and hash."""

    chain: str | None
    seq: int
    hash: str

    def link(self) -> dict[str, object]:
        return {"chain": self.chain, "seq": self.seq, "hash": self.hash}


def read_point(path: Path) -> ChainPoint | None:
    """The point stored in ``path``; None when there is none or it cannot be read."""
    try:
        body = json.loads(Path(path).read_bytes())
        chain = body.get("chain")
        point = ChainPoint(
            chain if isinstance(chain, str) else None, int(body["seq"]), str(body["hash"])
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("audit state file %s unreadable (%s): the new chain is not linked", path, exc)
        return None
    if point.seq < 0 or len(point.hash) != 64:
        log.error("audit state file %s holds no chain point: the new chain is not linked", path)
        return None
    return point


def write_point(path: Path, point: ChainPoint) -> None:
    """Replace ``path`` with ``point`` (a rename: a reader sees the old or the new one)."""
    tmp = Path(f"{path}.tmp")
    data = json.dumps(point._asdict(), separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
