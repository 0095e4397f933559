"""The notification interface without a database: the table of notifiers, the
delivery to handlers, and what the handlers of the key cache do."""

from __future__ import annotations

from muxproxy.auth import Authenticator, hash_key
from muxproxy.clock import ManualClock
from muxproxy.notify import EVERY, NOTIFIERS, Signal, open_notifier
from muxproxy.notify.local import LocalNotifier
from muxproxy.notify.sqlite import SqliteNotifier
from muxproxy.settings import DatabaseSettings
from muxproxy.store import BACKENDS
from muxproxy.store.pg_schema import PG_MIGRATIONS
from muxproxy.store.schema import MIGRATIONS
from muxproxy.testing import MemoryStore


def test_every_store_backend_has_a_notifier() -> None:
    assert set(NOTIFIERS) == set(BACKENDS)
    # A SQLite file one process serves on needs none; shared by workers, it has one.
    alone = open_notifier(DatabaseSettings(url="sqlite:///x.db"), ManualClock())
    assert isinstance(alone, LocalNotifier) and alone.recheck_seconds is None
    shared = open_notifier(DatabaseSettings(url="sqlite:///x.db"), ManualClock(), shared=True)
    assert isinstance(shared, SqliteNotifier) and shared.recheck_seconds is not None


def test_every_signal_is_sent_by_both_schemas() -> None:
    postgres, sqlite = "".join(PG_MIGRATIONS), "".join(MIGRATIONS)
    for signal in Signal:
        assert f"pg_notify('{signal.value}'" in postgres
        assert f"VALUES ('{signal.value}'" in sqlite


async def test_handlers_hear_their_signal_and_a_failing_one_stops_no_other() -> None:
    notifier = LocalNotifier()
    heard: list[tuple[str, str]] = []

    def broken(subject: str) -> None:
        raise RuntimeError(subject)

    notifier.subscribe(Signal.JOB_ENDED, broken)
    notifier.subscribe(Signal.JOB_ENDED, lambda subject: heard.append(("ended", subject)))
    notifier.subscribe(Signal.KEY_CHANGED, lambda subject: heard.append(("key", subject)))
    await notifier.start()
    notifier.deliver(Signal.JOB_ENDED, "job-1")
    notifier.deliver(Signal.JOB_QUEUED, "demo")  # nobody listens: nothing happens
    notifier.deliver_every()
    await notifier.aclose()
    assert heard == [("ended", "job-1"), ("ended", EVERY), ("key", EVERY)]


async def test_a_changed_key_leaves_the_cache_and_every_means_all() -> None:
    store = MemoryStore()
    auth = Authenticator(store, cache_seconds=3600)
    keys = {}
    for name in ("a", "b"):
        await store.create_key(name, hash_key(name), now=0)
        keys[name] = await auth.lookup(name)
    assert keys["a"] is not None and keys["b"] is not None
    await store.revoke_key(keys["a"].id, now=1)
    assert (await auth.lookup("a")) == keys["a"]  # cached: the change is not seen yet
    auth.forget_key(keys["a"].id)
    revoked = await auth.lookup("a")
    assert revoked is not None and revoked.revoked_at == 1
    await store.revoke_key(keys["b"].id, now=2)
    assert (await auth.lookup("b")) == keys["b"]
    auth.forget_key(EVERY)
    revoked = await auth.lookup("b")
    assert revoked is not None and revoked.revoked_at == 2
