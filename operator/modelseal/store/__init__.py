"""Counter stores for the gateway's quotas: embedded (one replica) and Redis (many).

Both run the same decision (``modelseal.quota.policy``): the embedded store calls it in
process; the Redis store runs it as one atomic Lua script, one round trip per request.
"""

from modelseal.store.base import (
    Admission,
    CounterStore,
    Lease,
    Scope,
    StoreError,
    StoreUnavailable,
    scopes_for,
)

__all__ = [
    "Admission",
    "CounterStore",
    "Lease",
    "Scope",
    "StoreError",
    "StoreUnavailable",
    "scopes_for",
]
