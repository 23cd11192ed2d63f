"""A watch-fed copy of the objects the operator owns, so that a reconcile reads them
without a GET each (issue 13 §3: the informer pattern, with kopf's watches as the feed).

`WatchCache` knows nothing of kopf: the operator's kopf handlers hand it every event of
the kinds in `CACHED_KINDS` (`observe`), and `CachedKube` (a `Kube`) answers `get` for
those kinds from it. The rules that keep a reconcile's view what a GET would have given:

* A key is *tracked* once the cache holds an answer for it: an object labelled as ours
  (``app.kubernetes.io/managed-by``) seen in a watch event, or the answer of a GET the
  reconciler made (found or not found), or the answer of one of our own writes. Every
  later event of a tracked key replaces the answer, whoever wrote the object and whatever
  its labels now say (a tenant's edit, a label taken off, a deletion); the events of
  other objects are ignored.
* A key that is not tracked is read with a GET, and the answer kept only if no event of
  that key arrived while the GET was in flight (else the event's newer state stays).
* A watch resumed after a gap re-lists every object, so no object and no change is
  ever missed; a deletion during the gap can be (kopf does not synthesise it). The
  periodic resync's runs therefore read through the cache (`read_through`): each key
  they read is read from the API server and the answer kept, as after a first GET. (It
  used to `clear` the cache instead, which made every run GET its objects again, the
  event-driven ones of a rollout in progress included: at 1,000 models the rollout
  slowed for a minute at each resync.)
* Our own writes store the server's answer (the write is newer than any event already
  delivered); a failed write, a delete or a patch forgets the key (the next read is a
  GET).
* The watch event of our own write (the resourceVersion that write made) tells nothing
  new: `observe` says so (`Seen.ECHO`), and the operator wakes no reconcile for it. The
  event often arrives before the write's own answer does (the API server sends both at
  once): events of a key that arrive while our write of it is in flight are held
  (`Seen.HELD`) until the answer says which was our echo. When each held event was the
  echo, the answer is kept; any other was someone else's change (older or newer than our
  write, which cannot be told): the key is forgotten (the next read is a GET) and
  `on_news` is told of it, so that it wakes a reconcile as for any event. (Forgetting the
  key at every such event, as before, made a fifth of the rollout's reads at 300 models
  GET objects the cache had just been told of, and each echo woke a reconcile.)
* Bodies are kept as compact JSON without ``metadata.managedFields`` (most of an
  object's bytes; the API server keeps its own when an update leaves them out), a fourth
  of their size as Python objects, compressed (`pack`: a third of that again), and each
  `lookup` decodes a fresh copy (no caller can change what the cache holds).

* Absent keys: the cache also knows which objects of each cached kind exist, whoever
  owns them (their keys only): every watch event says so, and one listing of the kind's
  metadata at start (`seed_present`, then `listed`) says so of the objects that existed
  before. Once a kind is listed, a key that is neither tracked nor present is answered
  ABSENT without a GET: a new model's objects (six GETs, each answered 404, were a fifth
  of a 1,000-model rollout's reads; issue 13 §3). A key is present until its deletion
  event; a deletion during the listing is not brought back by it. Knowing of an object
  late (its event still on its way) is what a GET followed by a create risks too: the
  create is refused (409), the key becomes present, and the retry reads it.

Only kinds the operator watches belong in `CACHED_KINDS`. Secrets are never watched (the
chart grants get by name only): `REMEMBERED_KINDS` keeps the objects our own reads found
and our writes made, until our delete or patch of them, and the periodic resync reads them
through like the rest. A Secret changed or deleted behind the operator's back is seen at
the next resync, as it was before unless some other event happened to wake its model (no
event of a Secret ever does). A Secret found absent is not remembered: a missing source
of credentials is read again at each retry. (Each pass GET the model's control Secret and
its Redis credentials' copy and source again: a sixth of a rollout's requests.)
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from enum import StrEnum
from typing import Any, Final

import orjson

from modelseal import fastjson
from modelseal.k8s.api import (
    CONFIG_MAP,
    DEPLOYMENT,
    NETWORK_POLICY,
    SECRET,
    SERVICE,
    SERVICE_ACCOUNT,
    ApiError,
    Json,
    Kind,
    Kube,
)

#: The kinds whose objects the cache keeps (each watched by the operator in every
#: namespace it serves models in).
CACHED_KINDS: Final = frozenset(
    k.kind for k in (SERVICE_ACCOUNT, CONFIG_MAP, SERVICE, NETWORK_POLICY, DEPLOYMENT)
)

#: The kinds not watched whose objects the cache keeps from our own reads and writes
#: (see the module's rules).
REMEMBERED_KINDS: Final = frozenset({SECRET.kind})
#: Every kind `CachedKube` answers from the cache.
ANSWERED_KINDS: Final = CACHED_KINDS | REMEMBERED_KINDS

Key = tuple[str, str, str]  # (kind, namespace, name)

#: Set in a task (and the tasks it starts) whose `CachedKube.get`s go to the API server
#: and refresh the cache: the periodic resync's drift checks.
_READ_THROUGH: ContextVar[bool] = ContextVar("modelseal_cache_read_through", default=False)


def read_through(enabled: bool = True) -> None:
    """From now on in this task (and the tasks it starts), `CachedKube.get` reads from the
    API server and keeps the answer; the cache answers nothing."""
    _READ_THROUGH.set(enabled)


def reading_through() -> bool:
    """Whether this task reads through (`read_through`)."""
    return _READ_THROUGH.get()


class _Absent:
    """The cached answer "no such object"."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()
#: What `lookup` answers for a key the cache cannot answer for (read it with a GET).
UNKNOWN: Final = None


def slim(body: Mapping[str, Any]) -> Json:
    """`body` without ``metadata.managedFields`` (shallow: the rest is shared)."""
    out = dict(body)
    meta = out.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return out


def pack(body: Mapping[str, Any]) -> bytes:
    """`slim(body)` as compact JSON (the standard library's where orjson refuses),
    compressed: a Deployment's 9 KB of JSON keep in under 3 KB (zlib's fastest level,
    80 µs; `unpack` 17 µs before the decoding), a fifth of the operator's traced memory
    in a rollout."""
    out = slim(body)
    try:
        raw = orjson.dumps(out)
    except TypeError:
        raw = json.dumps(out, separators=(",", ":")).encode()
    return zlib.compress(raw, 1)


def unpack(packed: bytes) -> Any:
    """The object `pack` kept (a fresh copy)."""
    return fastjson.loads(zlib.decompress(packed))


def key_of(kind: str, body: Mapping[str, Any]) -> Key | None:
    meta = body.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    if not namespace or not name:
        return None
    return (kind, str(namespace), str(name))


class Seen(StrEnum):
    """What a watch event is to the operator (`WatchCache.observe`)."""

    #: a change someone else made (or one the cache cannot place): wake its reconcile
    NEWS = "news"
    #: the event of our own last write of the object: nothing new
    ECHO = "echo"
    #: came while our write of the object was in flight: the write's end decides
    #: (`WatchCache.written` keeps it quiet if it was our echo, else tells `on_news`)
    HELD = "held"


def version_of(body: Mapping[str, Any] | None) -> str:
    return str(((body or {}).get("metadata") or {}).get("resourceVersion") or "")


class Reading:
    """A GET or a write in flight for the cache (`WatchCache.begin`); `WatchCache.fill` or
    `WatchCache.written` ends it."""

    __slots__ = ("epoch", "key", "write")

    def __init__(self, epoch: int, key: Key, write: bool = False) -> None:
        self.epoch = epoch
        self.key = key
        self.write = write


class WatchCache:
    """The latest state of the tracked keys of `CACHED_KINDS` (see the module's rules).

    Disabled (every `lookup` UNKNOWN, nothing kept) until `enable`: only an operator
    whose watches feed it may answer from it. Holds the tracked keys and the keys being
    read, nothing else."""

    def __init__(self, label: str, value: str) -> None:
        #: The label (and its value) that marks an object as the operator's.
        self.label = label
        self.value = value
        self.enabled = False
        self._answers: dict[Key, bytes | _Absent] = {}
        #: key -> GETs of it in flight; keys an event or a write touched meanwhile.
        self._reading: dict[Key, int] = {}
        self._overtaken: set[Key] = set()
        self._epoch = 0
        #: key -> the resourceVersion our last write of it made (its watch event is our
        #: own echo: nothing in it we did not know).
        self._written: dict[Key, str] = {}
        #: key -> our writes of it in flight; the events that came meanwhile (their
        #: resourceVersion and body), held until a write's answer tells ours apart.
        self._writing: dict[Key, int] = {}
        self._held: dict[Key, list[tuple[str, Mapping[str, Any]]]] = {}
        #: Told of each held event that was not our echo: (kind, body).
        self.on_news: Callable[[str, Mapping[str, Any]], None] | None = None
        #: Every object of the cached kinds known to exist (any owner), by key.
        self._present: set[Key] = set()
        #: Kinds listed whole once (`listed`): a key of these neither tracked nor present
        #: is absent.
        self._listed: set[str] = set()
        #: Keys deleted by an event while their kind was not yet listed (the listing,
        #: maybe older than the event, does not bring them back).
        self._deleted_unlisted: set[Key] = set()
        self.hits = 0
        self.misses = 0

    def enable(self) -> None:
        self.enabled = True

    def __len__(self) -> int:
        return len(self._answers)

    # --- the feed ------------------------------------------------------------------------
    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> Seen:
        """A watch event (kopf's ``type``: None for a listed object, ADDED, MODIFIED,
        DELETED) of an object of `kind`: the echo of our own last write of the object
        (its resourceVersion is the one that write made), someone's news, or held until
        our write in flight ends (see `Seen`)."""
        if not self.enabled or kind not in CACHED_KINDS:
            return Seen.NEWS
        key = key_of(kind, body)
        if key is None:
            return Seen.NEWS
        if event_type == "DELETED":
            self._present.discard(key)
            if kind not in self._listed:
                self._deleted_unlisted.add(key)
        else:
            self._present.add(key)
        if key in self._reading:
            self._overtaken.add(key)
        held = key in self._writing
        if held:
            version = "" if event_type == "DELETED" else version_of(body)
            self._held.setdefault(key, []).append((version, body))
        if event_type == "DELETED":
            self._written.pop(key, None)
            if key in self._answers:
                self._answers[key] = ABSENT
            return Seen.HELD if held else Seen.NEWS
        labels = (body.get("metadata") or {}).get("labels") or {}
        if key in self._answers or labels.get(self.label) == self.value:
            self._answers[key] = pack(body)
        version = version_of(body)
        if version and self._written.get(key) == version:
            del self._written[key]
            return Seen.ECHO
        return Seen.HELD if held else Seen.NEWS

    # --- the reconciler's side -----------------------------------------------------------
    def lookup(self, kind: str, namespace: str, name: str) -> Json | _Absent | None:
        """The cached answer: the object, ABSENT, or UNKNOWN (None: read it)."""
        if not self.enabled or kind not in ANSWERED_KINDS:
            return UNKNOWN
        key = (kind, namespace, name)
        answer = self._answers.get(key)
        if answer is None:
            if kind in self._listed and key not in self._present:
                self.hits += 1
                return ABSENT
            self.misses += 1
            return UNKNOWN
        self.hits += 1
        if isinstance(answer, bytes):
            doc = unpack(answer)
            return doc if isinstance(doc, dict) else UNKNOWN
        return answer

    def begin(self, kind: str, namespace: str, name: str, write: bool = False) -> Reading:
        """A GET of the key starts (`fill` keeps its answer only if nothing newer came), or
        with `write` one of our writes (`written`: its events are held until it ends)."""
        key = (kind, namespace, name)
        self._reading[key] = self._reading.get(key, 0) + 1
        if write:
            self._writing[key] = self._writing.get(key, 0) + 1
        return Reading(self._epoch, key, write)

    def _end(self, reading: Reading) -> bool:
        """End `reading`; True when nothing (an event, a write, a `clear`) came meanwhile."""
        key = reading.key
        left = self._reading.get(key, 0) - 1
        overtaken = key in self._overtaken
        if left > 0:
            self._reading[key] = left
        else:
            self._reading.pop(key, None)
            self._overtaken.discard(key)
        return not overtaken and reading.epoch == self._epoch

    def fill(self, reading: Reading, body: Json | None, ok: bool = True) -> None:
        """The GET of `reading` ended with `body` (None: not found; `ok` False: it failed).
        The answer is kept unless an event or a write of the key, or a `clear`, came
        meanwhile."""
        quiet = self._end(reading)
        key = reading.key
        if not ok or not quiet or not self.enabled or key[0] not in ANSWERED_KINDS:
            return
        if key[0] in REMEMBERED_KINDS:
            if body is None:
                self._answers.pop(key, None)
            else:
                self._answers[key] = pack(body)
            return
        self._answers[key] = ABSENT if body is None else pack(body)
        if body is None:
            self._present.discard(key)
        else:
            self._present.add(key)

    def written(self, reading: Reading, body: Json | None) -> None:
        """Our write of `reading`'s key (begun with `begin(write=True)`) ended with the
        server's answer `body` (None: it failed). The answer is kept, its event expected
        as our echo, when nothing came meanwhile. The events held meanwhile: when each was
        our echo, the answer is kept (the echo came already); any other is news (it may be
        newer than the write's answer or older): `on_news` hears of it and the key is
        forgotten (the next read is a GET). A failed write forgets the key, and every
        event held meanwhile is news."""
        key = reading.key
        held: list[tuple[str, Mapping[str, Any]]] = []
        if reading.write:
            left = self._writing.get(key, 0) - 1
            if left > 0:
                self._writing[key] = left
                held = list(self._held.get(key, []))
            else:
                self._writing.pop(key, None)
                held = self._held.pop(key, [])
        quiet = self._end(reading)
        version = version_of(body)
        news = [b for v, b in held if not version or v != version]
        echoed = bool(held) and not news and reading.epoch == self._epoch
        kind, namespace, name = key
        keep = body if (quiet or echoed) else None
        self.wrote(kind, namespace, name, keep)
        if echoed:
            self._written.pop(key, None)  # its echo came already
        if self.on_news is not None:
            for event in news:
                self.on_news(kind, event)

    def wrote(self, kind: str, namespace: str, name: str, body: Json | None) -> None:
        """One of our writes succeeded: keep the server's answer (None: forget the key, the
        next read is a GET)."""
        key = (kind, namespace, name)
        if key in self._reading:
            self._overtaken.add(key)
        if not self.enabled or kind not in ANSWERED_KINDS:
            return
        if body is None:
            self._answers.pop(key, None)
            self._written.pop(key, None)
        elif kind in REMEMBERED_KINDS:
            self._answers[key] = pack(body)  # no watch event to expect
        else:
            self._answers[key] = pack(body)
            self._present.add(key)
            version = str((body.get("metadata") or {}).get("resourceVersion") or "")
            if version:
                self._written[key] = version

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop a key (it was patched or deleted, or a write based on it failed); whether
        it exists is left to its events."""
        self.wrote(kind, namespace, name, None)

    def exists(self, kind: str, namespace: str, name: str) -> None:
        """The object exists (a create of it was refused as a conflict): read it next."""
        if kind in CACHED_KINDS:
            self._present.add((kind, namespace, name))

    def seed_present(self, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        """One page of the listing of every object of `kind` (made after the watch's
        events began to be observed): they exist, unless an event deleted one meanwhile."""
        if kind not in CACHED_KINDS:
            return
        for item in items:
            key = key_of(kind, item)
            if key is not None and key not in self._deleted_unlisted:
                self._present.add(key)

    def listed(self, kind: str) -> None:
        """The listing of `kind` is complete: its keys not present are absent from now on."""
        if kind not in CACHED_KINDS:
            return
        self._listed.add(kind)
        self._deleted_unlisted = {k for k in self._deleted_unlisted if k[0] != kind}

    def listed_kinds_missing(self) -> list[str]:
        """The cached kinds not listed yet (`listed`), in a fixed order."""
        return sorted(CACHED_KINDS - self._listed)

    def present(self) -> int:
        """How many objects of the cached kinds are known to exist."""
        return len(self._present)

    def clear(self) -> None:
        """Forget everything (the periodic resync): each key is read again once."""
        self._answers.clear()
        self._written.clear()
        self._epoch += 1


class Echoes:
    """The resourceVersions our own writes of objects made (a status patch), so that the
    watch event each causes can be told from a change someone else made. One entry per
    object: the last write's; it goes when its event comes (or a later write replaces
    it)."""

    def __init__(self) -> None:
        self._written: dict[tuple[str, str], str] = {}

    def wrote(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        if version:
            self._written[(namespace, name)] = version
        else:
            self._written.pop((namespace, name), None)

    def is_echo(self, namespace: str, name: str, body: Mapping[str, Any]) -> bool:
        """True (once) when `body` is exactly what our last write made."""
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        key = (namespace, name)
        if version and self._written.get(key) == version:
            del self._written[key]
            return True
        return False

    def forget(self, namespace: str, name: str) -> None:
        self._written.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._written)


class CachedKube(Kube):
    """`Kube` whose `get` of a cached kind answers from a `WatchCache`, and whose writes
    of those kinds keep the cache up to date. Everything else goes to the API server."""

    def __init__(self, kube: Kube, cache: WatchCache) -> None:
        super().__init__(kube.api, on_call=kube.on_call, timeout_s=kube.timeout_s)
        self.cache = cache

    async def get(self, kind: Kind, namespace: str, name: str) -> Json | None:
        if not self.cache.enabled or kind.kind not in ANSWERED_KINDS:
            return await super().get(kind, namespace, name)
        if not _READ_THROUGH.get():
            answer = self.cache.lookup(kind.kind, namespace, name)
            if answer is ABSENT:
                return None
            if isinstance(answer, dict):
                return answer
        reading = self.cache.begin(kind.kind, namespace, name)
        ok = False
        body = None
        try:
            body = await super().get(kind, namespace, name)
            ok = True
        finally:
            self.cache.fill(reading, body, ok)
        return body

    async def create(self, kind: Kind, namespace: str, body: Json) -> Json:
        name = str((body.get("metadata") or {}).get("name") or "")
        if not self.cache.enabled or kind.kind not in ANSWERED_KINDS or not name:
            return await super().create(kind, namespace, body)
        reading = self.cache.begin(kind.kind, namespace, name, write=True)
        try:
            out = await super().create(kind, namespace, body)
        except BaseException as exc:
            self.cache.written(reading, None)
            if isinstance(exc, ApiError) and exc.conflict:
                self.cache.exists(kind.kind, namespace, name)
            raise
        self.cache.written(reading, out)
        return out

    async def replace(self, kind: Kind, namespace: str, name: str, body: Json) -> Json:
        if not self.cache.enabled or kind.kind not in ANSWERED_KINDS:
            return await super().replace(kind, namespace, name, body)
        reading = self.cache.begin(kind.kind, namespace, name, write=True)
        try:
            out = await super().replace(kind, namespace, name, body)
        except BaseException:
            self.cache.written(reading, None)
            raise
        self.cache.written(reading, out)
        return out

    async def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: Json, sub: str | None = None
    ) -> Json:
        try:
            return await super().merge_patch(kind, namespace, name, patch, sub)
        finally:
            self.cache.forget(kind.kind, namespace, name)

    async def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> bool:
        try:
            return await super().delete(kind, namespace, name, uid)
        finally:
            self.cache.forget(kind.kind, namespace, name)
