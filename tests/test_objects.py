"""The object table without processes: entries driven by sequences of calls.

Each test makes a table on a fresh event loop (never run unless a future needs it) and
checks what the table promises in its module docstring: an entry resolves once, holds keep
it, a value holds the refs inside it, one future per (object, loop), the one rebuild
transition, and a release with no hold left is an error.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from aray._objects import HoldError, ObjectState, ObjectTable
from aray.store._serialize import deserialize, serialize

OID = b"o" * 16
OTHER = b"p" * 16


class Table:
    """An object table with what its process would supply: a reader of inline values and
    a record of the entries it deleted."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.unused: list[bytes] = []
        self.objects = ObjectTable(self.loop, self._materialize, self._on_unused)
        self.objects.bind_thread()

    def _materialize(self, entry):
        if entry.state is ObjectState.FAILED:
            raise entry.error
        return deserialize(entry.data)

    def _on_unused(self, entry) -> None:
        self.unused.append(entry.oid)

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def table():
    t = Table()
    yield t
    t.close()


def inline(value) -> list:
    return ["v", serialize(value).to_bytes()]


def test_an_entry_resolves_once(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.hold(entry)
    seen = []
    objects.when_ready(entry, lambda e: seen.append(e.state))
    objects.resolve(entry, inline(1))
    objects.resolve(entry, inline(2))  # a second answer (a retried task) changes nothing
    objects.fail(entry, ValueError("late"))
    assert seen == [ObjectState.READY]
    assert deserialize(entry.data) == 1 and entry.error is None
    failed = objects.add(OTHER)
    objects.hold(failed)
    objects.fail(failed, ValueError("first"))
    objects.resolve(failed, inline(3))
    assert failed.state is ObjectState.FAILED and str(failed.error) == "first"


def test_holds_keep_an_entry_until_the_last_release(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.hold(entry)
    objects.hold(entry)
    objects.resolve(entry, inline(1))
    objects.release(entry)
    assert OID in objects.entries and table.unused == []
    objects.release(entry)
    assert OID not in objects.entries and table.unused == [OID]


def test_a_release_without_a_hold_raises(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.hold(entry)
    objects.release(entry)
    with pytest.raises(HoldError):
        objects.release(entry)
    assert entry.holds == 0


def test_holds_by_id_apply_to_owned_entries_only(table):
    objects = table.objects
    assert not objects.hold_owned(OID)  # no such entry: freed already
    borrowed = objects.add(OTHER, owned=False, owner="unix:/elsewhere")
    assert not objects.hold_owned(OTHER) and borrowed.holds == 0
    entry = objects.add(OID)
    assert objects.hold_owned(OID) and entry.holds == 1
    objects.resolve(entry, inline(0))
    assert objects.release_owned(OID)
    assert OID not in objects.entries
    assert not objects.release_owned(OID)


def test_a_pending_owned_entry_stays_without_holds(table):
    objects = table.objects
    entry = objects.add(OID)  # a task's return: nobody may hold a ref yet
    objects.maybe_unused(entry)
    assert OID in objects.entries
    objects.resolve(entry, inline(1))  # resolving checks again
    assert OID not in objects.entries


def test_a_local_ref_keeps_an_entry(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.refs.incr(OID)
    objects.resolve(entry, inline(1))
    assert OID in objects.entries
    objects.refs.decr(OID)  # the check runs on the loop's next round
    table.loop.run_until_complete(asyncio.sleep(0))
    assert OID not in objects.entries


def test_a_ref_held_for_good_is_never_freed(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.refs.hold_for_good(OID)
    objects.resolve(entry, inline(1))
    assert OID in objects.entries


def test_a_value_holds_its_refs_while_it_lives(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.hold(entry)
    objects.resolve(entry, inline(1))
    inner = [object(), object()]
    objects.hold_refs(entry, inner)
    assert entry.held_refs == inner
    held_when_deleted = []
    table.objects._on_unused = lambda e: held_when_deleted.append(e.held_refs)
    objects.release(entry)
    assert held_when_deleted == [None]  # let go before the process hears of the deletion
    objects.hold_refs(objects.add(OTHER), [])
    assert objects.entries[OTHER].held_refs is None


def test_waiting_callbacks_keep_an_entry_until_forgotten(table):
    objects = table.objects
    entry = objects.add(OID, owned=False, owner="unix:/elsewhere")
    objects.refs.incr(OID)
    calls = []

    def waiter(e):
        calls.append(e)

    objects.when_ready(entry, waiter)
    objects.refs.decr(OID)
    table.loop.run_until_complete(asyncio.sleep(0))
    assert OID in objects.entries  # a wait still stands
    objects.forget_callback(entry, waiter)
    assert OID not in objects.entries and calls == []
    objects.forget_callback(entry, waiter)  # forgetting twice is harmless


def test_borrowed_entries_are_marked_and_fetched_once(table):
    objects = table.objects
    entry = objects.add(OID, owned=False, owner="unix:/elsewhere")
    assert objects.mark_held_at_owner(entry)
    assert not objects.mark_held_at_owner(entry)
    assert objects.start_fetch(entry)
    assert not objects.start_fetch(entry)
    owned = objects.add(OTHER)
    assert not objects.mark_held_at_owner(owned) and not objects.start_fetch(owned)


def test_one_future_per_object_and_loop(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.hold(entry)
    first = objects.future_for(OID, table.loop, lambda: entry)
    assert objects.future_for(OID, table.loop, lambda: entry) is first
    other_loop = asyncio.new_event_loop()
    try:
        theirs = objects.future_for(OID, other_loop, lambda: entry)
        assert theirs is not first
        table.loop.run_until_complete(asyncio.sleep(0))  # attach from the other loop
        assert entry.loops == {table.loop, other_loop}
        objects.resolve(entry, inline("v"))
        assert first.result() == "v"
        other_loop.run_until_complete(asyncio.sleep(0))  # settled by call_soon_threadsafe
        assert theirs.result() == "v"
    finally:
        other_loop.close()


def test_a_cancelled_future_is_replaced_by_a_fresh_wait(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.hold(entry)
    fut = objects.future_for(OID, table.loop, lambda: entry)
    fut.cancel()
    assert objects.future_for(OID, table.loop, lambda: entry) is fut
    fresh = objects.future_for(OID, table.loop, lambda: entry, fresh=True)
    assert fresh is not fut
    objects.fail(entry, KeyError("gone"))
    assert isinstance(fresh.exception(), KeyError)


def test_a_concurrent_future_from_another_thread(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.hold(entry)
    box = []
    thread = threading.Thread(target=lambda: box.append(objects.concurrent_future(lambda: entry)))
    thread.start()
    thread.join()
    table.loop.run_until_complete(asyncio.sleep(0))  # attach runs on the loop
    objects.resolve(entry, inline([1, 2]))
    assert box[0].result(timeout=5) == [1, 2]


def test_the_rebuild_transition(table):
    objects = table.objects
    entry = objects.add(OID)
    objects.hold(entry)
    objects.resolve(entry, ["s", "node-a", 1024, 0])
    objects.reopen_for_rebuild(entry)
    assert entry.state is ObjectState.PENDING and entry.location is None
    seen = []
    objects.when_ready(entry, lambda e: seen.append(e.location))
    objects.resolve(entry, ["s", "node-b", 1024, 64])  # the task ran again elsewhere
    assert seen == [("node-b", 1024, 64)]
    objects.resolve(entry, ["s", "node-c", 1024, 0])  # and it resolves once again
    assert entry.location == ("node-b", 1024, 64)


@pytest.mark.parametrize("make", ["inline", "failed", "pending", "borrowed"])
def test_only_a_stored_owned_value_can_be_rebuilt(table, make):
    objects = table.objects
    entry = objects.add(OID, owned=make != "borrowed", owner="unix:/elsewhere")
    objects.hold(entry)
    if make == "inline":
        objects.resolve(entry, inline(1))
    elif make == "failed":
        objects.fail(entry, ValueError("no"))
    elif make == "borrowed":
        objects.resolve(entry, ["s", "node-a", 1024, 0])
    state = entry.state
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        objects.reopen_for_rebuild(entry)
    assert entry.state is state
