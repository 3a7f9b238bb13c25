"""The per-process object table: what this process owns or has borrowed, and who waits.

The :class:`ObjectTable` is the only code that changes an entry: its state, its holds, the
refs its value holds, whether it is held at its owner or being fetched. Other modules call
its operations and read entries.

One word for what keeps an object alive: a **hold**. An entry lives while local
``ObjectRef`` instances exist or it has holds (``ObjectEntry.holds``: a pending task that
takes it as an argument, a borrower process counted by its owner, a reader waiting for a
copy to arrive). A value *holds the refs* pickled inside it while it lives
(``ObjectEntry.held_refs``). A borrowed entry is *held at its owner* once the owner counts
this process (``ObjectEntry.held_at_owner``). A ref pickled by user code, outside the
runtime's own serialization, is *held for good* (``RefCounter.held_for_good``): nobody can
tell when that pickle dies.

Invariants:

* Entries are created, resolved and deleted only on the runtime loop.
* An entry resolves once: PENDING -> READY (inline ``data`` or a store ``location``)
  or PENDING -> FAILED (``error``). Resolving a resolved entry again does nothing.
* The one exception is lineage: :meth:`ObjectTable.reopen_for_rebuild` turns an owned entry
  that is READY in a node's store back to PENDING when every copy of it was lost and the
  task that made it runs again; it then resolves once more. Only a stored value (never an
  inline one, never an error) of an entry this process owns can be reopened, and readers
  that already have its value keep it: a rebuilt value equals the lost one.
* Holds never go below zero: releasing a hold that was never taken raises
  :class:`HoldError` (a bug in the caller's bookkeeping, not something to absorb).
* Local reference counts are kept by :class:`RefCounter` from any thread (ObjectRefs are
  created and dropped everywhere); the entry is deleted on the loop once the count is zero
  and nothing holds it.

Borrowing: a process that unpickles a ref owned by another registers a hold with the owner
(``AddBorrower``) and releases it when its entry goes (``RemoveBorrower``); the owner keeps the
object while any such hold stands. A task returning a value with refs inside registers its
caller with their owners before it reports, so they cannot be freed in between; the caller's
own registration then takes over. See :mod:`aray._borrowing`.

A *resolved value* is how a value travels between processes: ``["v", data]`` (inline
serialized bytes), ``["s", node_id, size, offset]`` (in the object store of that node, at
``offset`` in its arena or, for -1, in a file of its own) or
``["e", pickled_error]``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import threading
from collections.abc import Callable
from typing import Any

import cloudpickle

from ._inbox import Inbox
from .exceptions import ObjectLostError

#: serialized values above this size go through the object store instead of inline
INLINE_THRESHOLD = 100 * 1024


class HoldError(RuntimeError):
    """A hold was released that was never taken (a count would go below zero)."""


class ObjectState(enum.Enum):
    """Where an entry is in its life: waiting for its value, or resolved (once)."""

    PENDING = 0
    READY = 1
    FAILED = 2


class ObjectEntry:
    """One object this process owns or borrows. Read it anywhere; change it only through
    :class:`ObjectTable`."""

    __slots__ = ("oid", "state", "data", "location", "error", "owned", "owner", "callbacks",
                 "loops", "holds", "held_refs", "held_at_owner", "fetching")

    def __init__(self, oid: bytes, owned: bool, owner: str = "") -> None:
        self.oid = oid
        self.state = ObjectState.PENDING
        self.data: bytes | None = None
        self.location: tuple[str, int, int] | None = None  # (node_id, size, offset) in a store
        self.error: BaseException | None = None
        self.owned = owned
        self.owner = owner
        self.callbacks: list[Callable[[ObjectEntry], None]] = []
        self.loops: set = set()  # event loops with a future for this entry
        # what keeps it alive besides local refs: pending tasks that take it as an argument,
        # readers waiting for its copy, and (owned objects) each borrower the owner counts
        self.holds = 0
        self.held_refs: list | None = None  # refs pickled inside the value: held while it lives
        self.held_at_owner = False  # borrowed: the owner counts this process as a holder
        self.fetching = False  # borrowed: its value was asked of the owner

    @property
    def ready(self) -> bool:
        """Resolved (READY or FAILED)."""
        return self.state is not ObjectState.PENDING

    def resolved_value(self) -> list:
        """This entry as a resolved value, to send to another process."""
        if self.state is ObjectState.FAILED:
            return ["e", dump_error(self.error)]
        if self.data is not None:
            return ["v", self.data]
        assert self.location is not None
        return ["s", *self.location]


def contained_refs(value: list) -> list:
    """The ``[object_id, owner]`` pairs of refs pickled inside a task's resolved result
    (a trailing element a worker adds when there are any)."""
    if value[0] == "v" and len(value) > 2:
        return value[2]
    if value[0] == "s" and len(value) > 4:
        return value[4]
    return []


def dump_error(err: BaseException | None) -> bytes:
    try:
        return cloudpickle.dumps(err)
    except Exception:
        return cloudpickle.dumps(ObjectLostError(f"an error that could not be pickled: {err!r}"))


def load_error(blob: bytes) -> BaseException:
    try:
        err = cloudpickle.loads(blob)
    except Exception as exc:
        return ObjectLostError(f"could not unpickle the error of a remote task: {exc!r}")
    return err if isinstance(err, BaseException) else ObjectLostError(repr(err))


class RefCounter:
    """Thread-safe counts of live ObjectRef instances per object id in this process."""

    def __init__(self, on_zero: Callable[[bytes], None]) -> None:
        self.lock = threading.Lock()
        self._counts: dict[bytes, int] = {}
        self._on_zero = on_zero
        # ids pickled by user code: held for good, nobody can tell when that pickle dies
        self.held_for_good: set[bytes] = set()

    def hold_for_good(self, oid: bytes) -> None:
        """Any thread: keep ``oid`` until shutdown (a ref pickled by user code)."""
        self.held_for_good.add(oid)

    def incr(self, oid: bytes) -> None:
        with self.lock:
            self._counts[oid] = self._counts.get(oid, 0) + 1

    def decr(self, oid: bytes) -> None:
        with self.lock:
            n = self._counts.get(oid, 0) - 1
            if n > 0:
                self._counts[oid] = n
                return
            self._counts.pop(oid, None)
        self._on_zero(oid)

    def count(self, oid: bytes) -> int:
        return self._counts.get(oid, 0)

    def __len__(self) -> int:
        return len(self._counts)


class ObjectTable:
    """Entries by object id, plus the asyncio futures that event loops await on them.

    The only code that changes an entry. ``materialize`` reads a resolved entry's value,
    ``on_unused`` is told of each entry deleted (its holds gone, no ref left), ``prepare``
    returns a coroutine to await before a resolved entry is read here (or None).

    Examples:
        >>> import asyncio
        >>> loop = asyncio.new_event_loop()
        >>> table = ObjectTable(loop, lambda e: e.data, lambda e: None)
        >>> table.bind_thread()
        >>> entry = table.add(b"x" * 16)
        >>> table.hold(entry)
        >>> table.resolve(entry, ["v", b"data"])
        >>> entry.state, b"x" * 16 in table.entries
        (<ObjectState.READY: 1>, True)
        >>> table.release(entry)  # the last hold: the entry goes
        >>> b"x" * 16 in table.entries
        False
        >>> loop.close()
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 materialize: Callable[[ObjectEntry], Any],
                 on_unused: Callable[[ObjectEntry], None],
                 prepare: Callable[[ObjectEntry], Any] = lambda e: None) -> None:
        self.loop = loop
        self.entries: dict[bytes, ObjectEntry] = {}
        self.refs = RefCounter(self._count_reached_zero)
        self._materialize = materialize
        self._on_unused = on_unused
        # a coroutine to await before a resolved entry can be read here (or None): fetching
        # a copy of an object stored on another node
        self._prepare = prepare
        self._futs: dict[tuple[bytes, Any], asyncio.Future] = {}
        self._futs_lock = threading.Lock()
        self._loop_thread: int | None = None
        #: calls from other threads, run on the loop in order (see aray/_inbox.py)
        self.inbox = Inbox(loop)

    def bind_thread(self) -> None:
        """Record the calling thread as the loop's (where entries change)."""
        self._loop_thread = threading.get_ident()

    def on_loop_thread(self) -> bool:
        """Any thread: is this the loop's thread?"""
        return threading.get_ident() == self._loop_thread

    # --- lifecycle (loop only) -----------------------------------------------------------
    def add(self, oid: bytes, owned: bool = True, owner: str = "") -> ObjectEntry:
        """The entry for ``oid``, made PENDING if there is none (an existing one is kept)."""
        entry = self.entries.get(oid)
        if entry is None:
            entry = self.entries[oid] = ObjectEntry(oid, owned, owner)
        return entry

    def resolve(self, entry: ObjectEntry, value: list) -> None:
        """Resolve ``entry`` with a resolved value (see the module docstring); once."""
        if entry.ready:
            return
        kind = value[0]
        if kind == "v":
            entry.data = value[1]
            entry.state = ObjectState.READY
        elif kind == "s":
            entry.location = (value[1], value[2], value[3])
            entry.state = ObjectState.READY
        else:
            entry.error = load_error(value[1])
            entry.state = ObjectState.FAILED
        self._notify(entry)

    def fail(self, entry: ObjectEntry, error: BaseException) -> None:
        """Resolve ``entry`` with ``error``; once."""
        if entry.ready:
            return
        entry.error = error
        entry.state = ObjectState.FAILED
        self._notify(entry)

    def when_ready(self, entry: ObjectEntry, callback: Callable[[ObjectEntry], None]) -> None:
        """Call ``callback(entry)`` once it is resolved (now, if it is). A waiting callback
        keeps the entry alive until it runs or is forgotten (:meth:`forget_callback`)."""
        if entry.ready:
            callback(entry)
        else:
            entry.callbacks.append(callback)

    def forget_callback(self, entry: ObjectEntry,
                        callback: Callable[[ObjectEntry], None]) -> None:
        """Drop a callback :meth:`when_ready` still keeps (a wait that timed out)."""
        if callback in entry.callbacks:
            entry.callbacks.remove(callback)
            self.maybe_unused(entry)

    def reopen_for_rebuild(self, entry: ObjectEntry) -> None:
        """Lineage, the one exception to "resolves once": every copy of the stored value of
        an owned entry was lost and its task runs again, so the entry is PENDING until the
        new value resolves it. Raises ValueError for any other entry."""
        if not (entry.owned and entry.state is ObjectState.READY
                and entry.location is not None):
            raise ValueError(f"object {entry.oid.hex()} cannot be rebuilt: only a stored "
                             "value this process owns is reopened")
        entry.state, entry.location, entry.data = ObjectState.PENDING, None, None

    def hold_refs(self, entry: ObjectEntry, refs: list) -> None:
        """The value of ``entry`` holds ``refs`` (pickled inside it) while it lives."""
        entry.held_refs = list(refs) or None

    def mark_held_at_owner(self, entry: ObjectEntry) -> bool:
        """A borrowed entry is about to be counted by its owner: True the first time (the
        caller then registers), False if it is owned or was marked already."""
        if entry.owned or entry.held_at_owner:
            return False
        entry.held_at_owner = True
        return True

    def start_fetch(self, entry: ObjectEntry) -> bool:
        """A borrowed, pending entry is about to be asked of its owner: True the first
        time (the caller then asks), False if it needs no asking or was asked already."""
        if entry.owned or entry.ready or entry.fetching:
            return False
        entry.fetching = True
        return True

    # --- holds (loop only) ---------------------------------------------------------------
    def hold(self, entry: ObjectEntry) -> None:
        """One more hold on ``entry``: it stays until the matching :meth:`release`."""
        entry.holds += 1

    def release(self, entry: ObjectEntry) -> None:
        """Let go of one hold taken with :meth:`hold`; the entry goes if nothing else keeps
        it. Raises HoldError if no hold is left to release."""
        if entry.holds <= 0:
            raise HoldError(f"object {entry.oid.hex()}: a hold was released that was never "
                            "taken")
        entry.holds -= 1
        self.maybe_unused(entry)

    def hold_owned(self, oid: bytes) -> bool:
        """Hold an entry this process owns, by id; False if there is none (freed)."""
        entry = self.entries.get(oid)
        if entry is None or not entry.owned:
            return False
        self.hold(entry)
        return True

    def release_owned(self, oid: bytes) -> bool:
        """Release a hold taken with :meth:`hold_owned`; False if the entry is gone."""
        entry = self.entries.get(oid)
        if entry is None or not entry.owned:
            return False
        self.release(entry)
        return True

    def _notify(self, entry: ObjectEntry) -> None:
        callbacks, entry.callbacks = entry.callbacks, []
        for cb in callbacks:
            cb(entry)
        if entry.loops:
            with self._futs_lock:
                futs = [(loop, self._futs.get((entry.oid, loop))) for loop in entry.loops]
            for loop, fut in futs:
                if fut is not None:
                    self._settle(entry, loop, fut)
        self.maybe_unused(entry)

    def _settle(self, entry: ObjectEntry, loop, fut: asyncio.Future,
                prepared: bool = False) -> None:
        if not prepared and self._after_prepare(
                entry, lambda: self._settle(entry, loop, fut, True)):
            return
        try:
            value, error = self._materialize(entry), None
        except BaseException as exc:  # the stored error, or a failure to read the value
            value, error = None, exc
        if loop is self.loop:
            _set_future(fut, value, error)
        else:
            try:
                loop.call_soon_threadsafe(_set_future, fut, value, error)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _after_prepare(self, entry: ObjectEntry, then: Callable[[], None]) -> bool:
        """Loop only: if ``entry`` needs preparing before it is read, start that and call
        ``then`` once it is done (whatever the outcome: the read reports errors)."""
        if entry.state is not ObjectState.READY:
            return False
        prep = self._prepare(entry)
        if prep is None:
            return False
        self.hold(entry)  # whoever waits may have no ref (``await f.remote()``)

        def done(task: asyncio.Task) -> None:
            if not task.cancelled():
                task.exception()  # the read that follows reports it
            then()
            self.release(entry)

        self.loop.create_task(prep).add_done_callback(done)
        return True

    # --- futures (any thread) ----------------------------------------------------------
    def future_for(self, oid: bytes, loop, get_entry: Callable[[], ObjectEntry],
                   fresh: bool = False) -> asyncio.Future:
        """The future through which ``loop`` awaits ``oid``; one per (object, loop).

        A cancelled future stays until a ``fresh`` wait replaces it.
        """
        key = (oid, loop)
        with self._futs_lock:
            fut = self._futs.get(key)
            if fut is not None and not (fresh and fut.cancelled()):
                return fut
            fut = loop.create_future()
            self._futs[key] = fut
        if loop is self.loop:
            self._attach(oid, loop, fut, get_entry)
        else:
            self.inbox.post(self._attach, oid, loop, fut, get_entry)
        return fut

    def _attach(self, oid, loop, fut, get_entry) -> None:
        entry = get_entry()
        entry.loops.add(loop)
        if entry.ready:
            self._settle(entry, loop, fut)

    def concurrent_future(self, get_entry: Callable[[], ObjectEntry]) -> concurrent.futures.Future:
        """Any thread: a concurrent.futures.Future for the value of ``get_entry()``."""
        cfut: concurrent.futures.Future = concurrent.futures.Future()

        def attach() -> None:
            entry = get_entry()

            def done(e: ObjectEntry, prepared: bool = False) -> None:
                if not prepared and self._after_prepare(e, lambda: done(e, True)):
                    return
                try:
                    cfut.set_result(self._materialize(e))
                except BaseException as exc:
                    cfut.set_exception(exc)

            self.when_ready(entry, done)

        if self.on_loop_thread():
            attach()
        else:
            self.inbox.post(attach)
        return cfut

    # --- freeing -----------------------------------------------------------------------
    def _count_reached_zero(self, oid: bytes) -> None:
        try:
            if self.on_loop_thread():
                self.loop.call_soon(self._check_unused, oid)
            else:
                self.inbox.post(self._check_unused, oid)
        except RuntimeError:  # loop closed at shutdown
            pass

    def _check_unused(self, oid: bytes) -> None:
        entry = self.entries.get(oid)
        if entry is not None:
            self.maybe_unused(entry)

    def maybe_unused(self, entry: ObjectEntry) -> None:
        """Delete ``entry`` if nothing keeps it any more (no ref, hold or waiter)."""
        oid = entry.oid
        # a borrowed entry may go before its value came: the owner has it
        if not ((entry.ready or not entry.owned) and entry.holds == 0 and not entry.callbacks
                and oid not in self.refs.held_for_good):
            return
        # atomic with ref creation: a thread that makes a ref and then finds the entry
        # (unpickling a borrowed ref) knows it stays
        with self.refs.lock:
            if self.refs.count(oid) != 0:
                return
            del self.entries[oid]
        if entry.loops:
            with self._futs_lock:
                for loop in entry.loops:
                    self._futs.pop((oid, loop), None)
        entry.held_refs = None  # the refs inside it are free to go
        self._on_unused(entry)


def _set_future(fut: asyncio.Future, value, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)
