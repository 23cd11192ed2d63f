"""The operator's watch cache (`modelseal.k8s.cache.WatchCache`): which answer a read gets
after which events, GETs and writes."""

from __future__ import annotations

from typing import Any

import pytest

from modelseal.k8s.cache import (
    ABSENT,
    CACHED_KINDS,
    REMEMBERED_KINDS,
    UNKNOWN,
    Echoes,
    Seen,
    WatchCache,
    slim,
)

LABEL, OURS = "app.kubernetes.io/managed-by", "modelseal-operator"


def obj(name: str = "m-dep", rv: str = "1", ours: bool = True, **extra: Any) -> dict[str, Any]:
    labels = {LABEL: OURS} if ours else {}
    meta = {"name": name, "namespace": "ns", "resourceVersion": rv, "labels": labels}
    meta["managedFields"] = [{"manager": "x"}]
    return {"kind": "Deployment", "metadata": meta, **extra}


def cache() -> WatchCache:
    c = WatchCache(LABEL, OURS)
    c.enable()
    return c


def test_disabled_cache_answers_nothing_and_keeps_nothing() -> None:
    c = WatchCache(LABEL, OURS)
    c.observe("Deployment", "ADDED", obj())
    assert c.lookup("Deployment", "ns", "m-dep") is UNKNOWN
    c.fill(c.begin("Deployment", "ns", "x"), obj("x"))
    assert len(c) == 0


def test_only_watched_owned_kinds_are_cached() -> None:
    c = cache()
    assert "Secret" not in CACHED_KINDS
    c.observe("Secret", "ADDED", obj("s"))
    assert c.lookup("Secret", "ns", "s") is UNKNOWN
    c.fill(c.begin("Secret", "ns", "s"), None)
    assert c.lookup("Secret", "ns", "s") is UNKNOWN


def test_our_objects_are_kept_from_their_events_without_managed_fields() -> None:
    c = cache()
    c.observe("Deployment", None, obj(rv="3"))
    got = c.lookup("Deployment", "ns", "m-dep")
    assert isinstance(got, dict)
    assert got["metadata"]["resourceVersion"] == "3"
    assert "managedFields" not in got["metadata"]


def test_someone_elses_object_is_not_tracked_until_read() -> None:
    c = cache()
    c.observe("Deployment", "ADDED", obj("theirs", ours=False))
    assert c.lookup("Deployment", "ns", "theirs") is UNKNOWN
    reading = c.begin("Deployment", "ns", "theirs")
    c.fill(reading, obj("theirs", rv="5", ours=False))
    got = c.lookup("Deployment", "ns", "theirs")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "5"
    # Tracked now: its next change is followed though it is not ours.
    c.observe("Deployment", "MODIFIED", obj("theirs", rv="6", ours=False))
    got = c.lookup("Deployment", "ns", "theirs")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "6"


def test_a_label_taken_off_our_object_is_still_followed() -> None:
    c = cache()
    c.observe("Deployment", "ADDED", obj(rv="1"))
    c.observe("Deployment", "MODIFIED", obj(rv="2", ours=False))
    got = c.lookup("Deployment", "ns", "m-dep")
    assert isinstance(got, dict) and got["metadata"]["labels"] == {}


def test_deletion_of_a_tracked_key_answers_absent_and_a_new_object_replaces_it() -> None:
    c = cache()
    c.observe("Deployment", "ADDED", obj())
    c.observe("Deployment", "DELETED", obj())
    assert c.lookup("Deployment", "ns", "m-dep") is ABSENT
    # A squatter's object of the name (not ours): followed, since the key is tracked.
    c.observe("Deployment", "ADDED", obj(rv="9", ours=False))
    got = c.lookup("Deployment", "ns", "m-dep")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "9"


def test_a_not_found_get_is_kept_as_absent_until_an_event() -> None:
    c = cache()
    c.fill(c.begin("ConfigMap", "ns", "cfg"), None)
    assert c.lookup("ConfigMap", "ns", "cfg") is ABSENT
    c.observe("ConfigMap", "ADDED", {"metadata": {"name": "cfg", "namespace": "ns"}})
    assert isinstance(c.lookup("ConfigMap", "ns", "cfg"), dict)


@pytest.mark.parametrize("event", ["MODIFIED", "DELETED"])
def test_an_event_during_a_get_wins_over_the_gets_answer(event: str) -> None:
    c = cache()
    reading = c.begin("Deployment", "ns", "theirs")
    c.observe("Deployment", event, obj("theirs", rv="7", ours=False))
    c.fill(reading, obj("theirs", rv="6", ours=False))
    # The GET's (possibly older) answer is dropped; the next read is a GET again.
    assert c.lookup("Deployment", "ns", "theirs") is UNKNOWN


def test_a_failed_get_keeps_nothing() -> None:
    c = cache()
    c.fill(c.begin("Deployment", "ns", "x"), None, ok=False)
    assert c.lookup("Deployment", "ns", "x") is UNKNOWN


def test_clear_during_a_get_drops_its_answer() -> None:
    c = cache()
    c.observe("Deployment", "ADDED", obj())
    reading = c.begin("Deployment", "ns", "other")
    c.clear()
    c.fill(reading, obj("other"))
    assert c.lookup("Deployment", "ns", "other") is UNKNOWN
    assert c.lookup("Deployment", "ns", "m-dep") is UNKNOWN


def test_our_write_is_kept_and_a_patch_or_delete_forgets() -> None:
    c = cache()
    c.wrote("Deployment", "ns", "m-dep", obj(rv="4"))
    got = c.lookup("Deployment", "ns", "m-dep")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "4"
    c.forget("Deployment", "ns", "m-dep")
    assert c.lookup("Deployment", "ns", "m-dep") is UNKNOWN


def test_a_write_during_a_get_wins_over_the_gets_answer() -> None:
    c = cache()
    reading = c.begin("Deployment", "ns", "m-dep")
    c.wrote("Deployment", "ns", "m-dep", obj(rv="8"))
    c.fill(reading, None)
    got = c.lookup("Deployment", "ns", "m-dep")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "8"


def test_slim_leaves_the_body_it_was_given_alone() -> None:
    body = obj()
    out = slim(body)
    assert "managedFields" in body["metadata"]
    assert "managedFields" not in out["metadata"]
    assert out["metadata"]["name"] == "m-dep"


def test_the_event_of_our_own_write_is_told_apart_once() -> None:
    c = cache()
    c.wrote("Deployment", "ns", "m-dep", obj(rv="10"))
    assert c.observe("Deployment", "MODIFIED", obj(rv="9")) is Seen.NEWS  # older, someone's
    assert c.observe("Deployment", "MODIFIED", obj(rv="10")) is Seen.ECHO  # ours
    assert c.observe("Deployment", "MODIFIED", obj(rv="10")) is Seen.NEWS  # only once
    assert c.observe("Deployment", "MODIFIED", obj(rv="11")) is Seen.NEWS  # a later change


def test_no_echo_after_a_forget_or_a_clear() -> None:
    c = cache()
    c.wrote("Deployment", "ns", "m-dep", obj(rv="10"))
    c.forget("Deployment", "ns", "m-dep")
    assert c.observe("Deployment", "MODIFIED", obj(rv="10")) is Seen.NEWS
    c.wrote("Deployment", "ns", "m-dep", obj(rv="12"))
    c.clear()
    assert c.observe("Deployment", "MODIFIED", obj(rv="12")) is Seen.NEWS


def test_echoes_of_status_patches() -> None:
    echoes = Echoes()
    echoes.wrote("ns", "m", {"metadata": {"resourceVersion": "5"}})
    assert not echoes.is_echo("ns", "m", {"metadata": {"resourceVersion": "4"}})
    assert not echoes.is_echo("ns", "other", {"metadata": {"resourceVersion": "5"}})
    assert echoes.is_echo("ns", "m", {"metadata": {"resourceVersion": "5"}})
    assert not echoes.is_echo("ns", "m", {"metadata": {"resourceVersion": "5"}})
    assert len(echoes) == 0
    echoes.wrote("ns", "m", {"metadata": {"resourceVersion": "6"}})
    echoes.wrote("ns", "m", {"metadata": {"resourceVersion": "7"}})  # the last write counts
    assert not echoes.is_echo("ns", "m", {"metadata": {"resourceVersion": "6"}})
    echoes.forget("ns", "m")
    assert not echoes.is_echo("ns", "m", {"metadata": {"resourceVersion": "7"}})
    echoes.wrote("ns", "m", {"metadata": {}})  # no version: nothing to expect
    assert len(echoes) == 0


def test_a_write_answer_is_kept_when_nothing_came_meanwhile() -> None:
    c = cache()
    reading = c.begin("Deployment", "ns", "m-dep")
    c.written(reading, obj(rv="10"))
    got = c.lookup("Deployment", "ns", "m-dep")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "10"
    assert c.observe("Deployment", "MODIFIED", obj(rv="10")) is Seen.ECHO


def test_an_event_during_our_write_makes_the_key_read_again() -> None:
    """The write's answer may be older than that event (a tenant's edit right after our
    write): neither is trusted, the next read is a GET, and the other event is news."""
    c, news = cache_with_news()
    reading = c.begin("Deployment", "ns", "m-dep", write=True)
    assert c.observe("Deployment", "MODIFIED", obj(rv="10")) is Seen.HELD
    assert c.observe("Deployment", "MODIFIED", obj(rv="11")) is Seen.HELD  # someone else's
    c.written(reading, obj(rv="10"))
    assert c.lookup("Deployment", "ns", "m-dep") is UNKNOWN
    assert news == [("Deployment", "11")]


def test_our_echo_before_the_writes_answer_keeps_the_answer_quietly() -> None:
    """The API server sends the event of our create to the watch as it answers us: the
    event often comes first. It is held, found to be our echo, and nothing is read again
    or woken."""
    c, news = cache_with_news()
    reading = c.begin("Deployment", "ns", "m-dep", write=True)
    assert c.observe("Deployment", "ADDED", obj(rv="10")) is Seen.HELD
    c.written(reading, obj(rv="10"))
    got = c.lookup("Deployment", "ns", "m-dep")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "10"
    assert news == []
    # the echo came already: a later event of that version is not taken for one again
    # (it cannot come twice), and the next change is news
    assert c.observe("Deployment", "MODIFIED", obj(rv="11")) is Seen.NEWS


def test_events_held_through_a_failed_write_are_news() -> None:
    c, news = cache_with_news()
    reading = c.begin("Deployment", "ns", "m-dep", write=True)
    assert c.observe("Deployment", "MODIFIED", obj(rv="7")) is Seen.HELD
    assert c.observe("Deployment", "DELETED", obj(rv="8")) is Seen.HELD
    c.written(reading, None)
    assert c.lookup("Deployment", "ns", "m-dep") is UNKNOWN
    assert news == [("Deployment", "7"), ("Deployment", "8")]


def test_a_deletion_held_through_our_write_is_news_even_with_our_version() -> None:
    c, news = cache_with_news()
    reading = c.begin("Deployment", "ns", "m-dep", write=True)
    c.observe("Deployment", "ADDED", obj(rv="10"))
    c.observe("Deployment", "DELETED", obj(rv="10"))
    c.written(reading, obj(rv="10"))
    assert c.lookup("Deployment", "ns", "m-dep") is UNKNOWN
    assert news == [("Deployment", "10")]


def test_only_our_writes_hold_events() -> None:
    """A GET in flight holds nothing (its answer is dropped, the event is news), and a
    write of another key holds nothing of this one."""
    c, news = cache_with_news()
    get = c.begin("Deployment", "ns", "m-dep")
    other = c.begin("Deployment", "ns", "other", write=True)
    assert c.observe("Deployment", "MODIFIED", obj(rv="5")) is Seen.NEWS
    c.fill(get, obj(rv="4"))
    c.written(other, obj("other", rv="6"))
    got = c.lookup("Deployment", "ns", "m-dep")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "5"
    assert news == []


def test_a_clear_during_our_write_drops_its_answer_even_after_its_echo() -> None:
    c, news = cache_with_news()
    reading = c.begin("Deployment", "ns", "m-dep", write=True)
    c.observe("Deployment", "ADDED", obj(rv="10"))
    c.clear()
    c.written(reading, obj(rv="10"))
    assert c.lookup("Deployment", "ns", "m-dep") is UNKNOWN
    assert news == []


def cache_with_news() -> tuple[WatchCache, list[tuple[str, str]]]:
    c = cache()
    news: list[tuple[str, str]] = []
    c.on_news = lambda kind, body: news.append((kind, body["metadata"]["resourceVersion"]))
    return c, news


def test_a_failed_write_forgets_the_key() -> None:
    c = cache()
    c.observe("Deployment", "ADDED", obj(rv="3"))
    c.written(c.begin("Deployment", "ns", "m-dep"), None)
    assert c.lookup("Deployment", "ns", "m-dep") is UNKNOWN


# --- absent keys: which objects exist, once a kind is listed ---------------------------


def test_before_its_kind_is_listed_an_unknown_key_is_read() -> None:
    c = cache()
    c.seed_present("Deployment", [obj("other", ours=False)])
    assert c.lookup("Deployment", "ns", "new") is UNKNOWN
    c.listed("Deployment")
    assert c.lookup("Deployment", "ns", "new") is ABSENT
    # other kinds are not listed yet
    assert c.lookup("Service", "ns", "new") is UNKNOWN
    assert "Deployment" not in c.listed_kinds_missing()
    assert "Service" in c.listed_kinds_missing()


def test_someone_elses_object_listed_or_seen_is_read_not_answered_absent() -> None:
    c = cache()
    c.seed_present("Deployment", [obj("listed", ours=False)])
    c.listed("Deployment")
    c.observe("Deployment", "ADDED", obj("seen", ours=False))
    # not tracked (not ours), but known to exist: a GET decides
    assert c.lookup("Deployment", "ns", "listed") is UNKNOWN
    assert c.lookup("Deployment", "ns", "seen") is UNKNOWN
    assert c.present() == 2


def test_a_deletion_event_makes_an_untracked_key_absent() -> None:
    c = cache()
    c.listed("Deployment")
    c.observe("Deployment", "ADDED", obj("theirs", ours=False))
    c.observe("Deployment", "DELETED", obj("theirs", ours=False))
    assert c.lookup("Deployment", "ns", "theirs") is ABSENT


def test_a_deletion_during_the_listing_is_not_brought_back_by_it() -> None:
    c = cache()
    c.observe("Deployment", "DELETED", obj("gone", ours=False))
    c.seed_present("Deployment", [obj("gone", ours=False)])  # a page read before it
    c.listed("Deployment")
    assert c.lookup("Deployment", "ns", "gone") is ABSENT
    # once listed, a later creation of the name is known again
    c.observe("Deployment", "ADDED", obj("gone", ours=False))
    assert c.lookup("Deployment", "ns", "gone") is UNKNOWN


def test_a_conflict_on_create_makes_the_key_present() -> None:
    c = cache()
    c.listed("Service")
    assert c.lookup("Service", "ns", "svc") is ABSENT
    reading = c.begin("Service", "ns", "svc", write=True)
    c.written(reading, None)  # the create failed ...
    c.exists("Service", "ns", "svc")  # ... as a conflict: someone made it meanwhile
    assert c.lookup("Service", "ns", "svc") is UNKNOWN


def test_our_create_a_get_and_a_quiet_not_found_keep_presence_right() -> None:
    c = cache()
    c.listed("Deployment")
    reading = c.begin("Deployment", "ns", "m-dep", write=True)
    c.written(reading, obj(rv="4"))
    assert c.present() == 1
    # forgotten after a patch: still exists, so read again rather than answered absent
    c.forget("Deployment", "ns", "m-dep")
    assert c.lookup("Deployment", "ns", "m-dep") is UNKNOWN
    c.fill(c.begin("Deployment", "ns", "m-dep"), None)  # a GET: not found after all
    assert c.lookup("Deployment", "ns", "m-dep") is ABSENT
    assert c.present() == 0


def test_secrets_and_other_uncached_kinds_are_never_answered_absent() -> None:
    c = cache()
    c.listed("Secret")
    c.seed_present("Secret", [obj("s")])
    c.exists("Secret", "ns", "s")
    assert c.lookup("Secret", "ns", "other") is UNKNOWN
    assert c.present() == 0


# --- Secrets: not watched, remembered from our own reads and writes ----------------------


def secret(name: str = "m-control", rv: str = "1") -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "resourceVersion": rv}
    return {"kind": "Secret", "metadata": meta, "data": {"token": "dG9rZW4="}}


def test_a_secret_found_or_written_is_remembered_until_our_delete() -> None:
    c = cache()
    assert "Secret" in REMEMBERED_KINDS and "Secret" not in CACHED_KINDS
    assert c.lookup("Secret", "ns", "m-control") is UNKNOWN
    c.fill(c.begin("Secret", "ns", "m-control"), secret(rv="3"))
    got = c.lookup("Secret", "ns", "m-control")
    assert isinstance(got, dict) and got["data"] == {"token": "dG9rZW4="}
    got["data"]["token"] = "changed by the caller"
    again = c.lookup("Secret", "ns", "m-control")
    assert isinstance(again, dict) and again["data"] == {"token": "dG9rZW4="}
    # our replace: its answer is remembered (no watch event will echo it)
    reading = c.begin("Secret", "ns", "m-control", write=True)
    c.written(reading, secret(rv="4"))
    got = c.lookup("Secret", "ns", "m-control")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "4"
    c.forget("Secret", "ns", "m-control")  # our delete or patch
    assert c.lookup("Secret", "ns", "m-control") is UNKNOWN


def test_a_secret_found_absent_is_read_again() -> None:
    """A missing source of credentials is read at each retry, so that it is found once
    the platform makes it (not only at the next resync)."""
    c = cache()
    c.fill(c.begin("Secret", "ns", "source"), None)
    assert c.lookup("Secret", "ns", "source") is UNKNOWN
    c.listed("Secret")  # never listed: no presence knowledge for Secrets
    assert c.lookup("Secret", "ns", "source") is UNKNOWN


def test_a_secret_read_while_our_write_of_it_ran_is_not_remembered() -> None:
    c = cache()
    reading = c.begin("Secret", "ns", "m-control")
    c.written(c.begin("Secret", "ns", "m-control", write=True), secret(rv="5"))
    c.fill(reading, secret(rv="4"))  # the GET began before the write: older
    got = c.lookup("Secret", "ns", "m-control")
    assert isinstance(got, dict) and got["metadata"]["resourceVersion"] == "5"
