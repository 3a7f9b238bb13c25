"""Ownership: the objects a process owns, and its side of those it borrows.

A process owns what it puts and the results of the tasks it submits. :class:`Ownership`
makes the entries for refs (an owned one here, or a borrowed one that asks its owner),
writes values into this node's store, resolves or fails task results, answers other
processes' ``GetObject`` for the objects it owns, and has a stored object deleted once no
process holds it. The state of each entry changes only in the
:class:`~aray._objects.ObjectTable`; this component decides when.

It is handed the table, the borrowing protocol, this node's store and the few things of its
process it uses (:class:`OwnerHost`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from . import _protocol as P
from ._borrowing import Borrowers
from ._link import CONTROL_TIMEOUT, Link
from ._objects import INLINE_THRESHOLD, ObjectEntry, ObjectTable, dump_error
from ._refs import ObjectRef, collect_refs, new_task_id, return_id
from .exceptions import ObjectLostError, ObjectStoreFullError, OwnerDiedError
from .store._serialize import serialize
from .store.arena import MIN_SIZE as ARENA_MIN_SIZE
from .store.shm import ShmDirectory


class OwnerHost(Protocol):
    """What ownership needs of its process (the node's figures are known once it started)."""

    address: str  # this process's server: the owner named in its refs
    node_id: str
    client: bool  # a driver outside the cluster: no store, values stay inline
    agent: Link | None  # this node's agent
    store_capacity: int  # of this node's store; 0 until the agent said

    def spawn(self, coro: Coroutine, name: str = "") -> asyncio.Task: ...

    async def peer(self, address: str) -> Link: ...

    def call_soon(self, fn: Callable, *args: Any) -> None: ...

    def tell_agent(self, msg: Any) -> None: ...


class Ownership:
    """The owned and borrowed objects of one process. Loop only unless a method says so.

    ``forget(entry)`` is called for an entry nobody uses any more, before it is deleted from
    the store (the fetcher and the task lineage drop what they know of it).
    """

    def __init__(self, host: OwnerHost, objects: ObjectTable, borrowers: Borrowers,
                 store: ShmDirectory, forget: Callable[[ObjectEntry], None]) -> None:
        self.host = host
        # fixed for the life of the process, and read on every put and every ref: kept here
        self.address = host.address
        self._client = host.client
        self._call_soon = host.call_soon
        self.objects = objects
        self.borrowers = borrowers
        self.store = store
        self._forget = forget

    # --- entries -------------------------------------------------------------------------
    def entry_for(self, ref: ObjectRef) -> ObjectEntry:
        """The entry for ``ref``; a borrowed ref gets one that asks its owner."""
        entry = self.objects.entries.get(ref._id)
        if entry is None and (ref._owner == self.address or not ref._owner):
            entry = self.objects.add(ref._id, owned=True)
            self.objects.fail(entry, ObjectLostError(
                f"object {ref.hex()} is gone: its owner released it, or it belongs to an "
                "earlier aray session"))
            return entry
        if entry is None:
            entry = self.borrowers.borrowed_entry(ref._id, ref._owner)
        # (read here first: most entries are owned or ready, and this is the hot path)
        if not (entry.owned or entry.ready) and self.objects.start_fetch(entry):
            self.host.spawn(self._fetch_from_owner(entry), name="fetch")
        return entry

    def foreign_ref(self, ref: ObjectRef, cluster: str) -> None:
        """``ref`` was unpickled here but made by another cluster (``cluster``): an earlier
        aray session, most often. Its value cannot be had: say so at once."""
        if ref._id in self.objects.entries:
            return
        entry = self.objects.add(ref._id, owned=False, owner=ref._owner)
        self.objects.fail(entry, ObjectLostError(
            f"object {ref.hex()} belongs to another aray cluster ({cluster}), most likely an "
            "earlier session: refs do not outlive the cluster that made them. Put the value "
            "again in this session, or keep that cluster running while its refs are used."))

    async def _fetch_from_owner(self, entry: ObjectEntry) -> None:
        try:
            link = await self.host.peer(entry.owner)
            # answered once the object is ready, however long its task runs; if the
            # owner's node dies, the link closes (NodeDied) and this raises
            reply = await link.request(lambda r: P.GetObject(r, entry.oid), timeout=None)
        except (ConnectionError, OSError):
            self.objects.fail(entry, OwnerDiedError(
                f"the owner of object {entry.oid.hex()} ({entry.owner}) has exited, so the "
                "object is lost (or the ref belongs to an earlier aray session). Keep the "
                "process that created a ref alive while others use it."))
            return
        self.objects.resolve(entry, reply.value)

    def _on_GetObject(self, link: Link, msg: P.GetObject) -> None:
        entry = self.objects.entries.get(msg.object_id)
        if entry is None:
            err = ObjectLostError(f"object {msg.object_id.hex()} was already freed by its owner")
            link.send(P.ObjectReply(msg.req_id, ["e", dump_error(err)]))
            return

        def reply(e: ObjectEntry) -> None:
            if not link.closed:
                link.send(P.ObjectReply(msg.req_id, e.resolved_value()))

        self.objects.when_ready(entry, reply)

    def on_unused(self, entry: ObjectEntry) -> None:
        """The table's call for an entry no ref and no hold keeps any more."""
        self._forget(entry)
        if entry.owned and entry.location is not None:
            self.delete_stored(entry.oid, entry.location[0])
        self.borrowers.on_unused(entry)

    # --- task results --------------------------------------------------------------------
    def finish_returns(self, return_ids: list[bytes], results: list) -> None:
        """A task or actor call of ours returned ``results`` (resolved values)."""
        for oid, value in zip(return_ids, results):
            self.borrowers.accept_value(oid, value)

    def fail_returns(self, return_ids: list[bytes], error: BaseException | None) -> None:
        """A task or actor call of ours failed: its results raise ``error``."""
        for oid in return_ids:
            entry = self.objects.entries.get(oid)
            if entry is not None:
                self.objects.fail(entry, error or ObjectLostError("task failed"))

    # --- puts and the store --------------------------------------------------------------
    def put(self, value: Any) -> ObjectRef:
        """Any thread: serialize ``value`` here and own it."""
        if isinstance(value, ObjectRef):
            raise TypeError("aray.put() of an ObjectRef is not allowed; pass the ref itself")
        try:
            ser, contained = collect_refs(serialize, value)
        except Exception as exc:
            raise TypeError(
                f"aray.put(): a {type(value).__name__} cannot be pickled: {exc}") from exc
        return self.put_serialized(ser, contained)

    def put_serialized(self, ser, contained: Sequence[ObjectRef] = ()) -> ObjectRef:
        """Any thread: store an already serialized value (which pickled the refs
        ``contained``); returns the owned ref."""
        oid = return_id(new_task_id(), 0)
        if ser.total_size > INLINE_THRESHOLD and not self._client:
            value = self.store_value(oid, ser)
        else:
            value = ["v", ser.to_bytes()]
        # the ref first: it counts as a use of the entry, which the loop would otherwise
        # find unused (and free) as soon as it is registered
        ref: ObjectRef[Any] = ObjectRef(oid, self.address)
        self._call_soon(self._register_put, oid, value, list(contained))
        return ref

    def _register_put(self, oid: bytes, value: list, contained: list) -> None:
        entry = self.objects.add(oid, owned=True)
        self.objects.resolve(entry, value)
        self.objects.hold_refs(entry, contained)

    def store_value(self, oid: bytes, ser, owner: str = "") -> list:
        """Any thread: write a serialized value into this node's store and tell the node
        agent (which spills older objects if memory is over capacity); returns its resolved
        value. Raises ObjectStoreFullError for an object larger than the whole store."""
        size = ser.total_size
        capacity = self.host.store_capacity
        if capacity and size > capacity:
            raise ObjectStoreFullError(
                f"an object of {size / 2**20:.1f} MiB does not fit in this node's object store "
                f"of {capacity / 2**20:.1f} MiB, even empty. Start aray with a "
                "larger object_store_memory, or split the object into smaller pieces.")
        offset = self._arena_region(oid, size)
        try:
            if offset >= 0:
                self.store.arena.write(offset, oid, ser)
                in_memory = True
            else:
                in_memory = self.store.write(oid, ser)
        except OSError as exc:
            raise ObjectStoreFullError(
                f"an object of {size / 2**20:.1f} MiB could not be stored in shared memory "
                f"nor spilled to disk: {exc}") from None
        host = self.host
        host.call_soon(host.tell_agent,
                       P.ObjectSealed(oid, size, not in_memory, owner or host.address, offset))
        return ["s", host.node_id, size, offset]

    def _arena_region(self, oid: bytes, size: int) -> int:
        """Any thread: an arena region for a large object, or -1 for a file of its own.

        Asking the agent is a round trip, so only objects worth it ask, and never from the
        loop thread (which must not block on its own link).
        """
        agent = self.host.agent
        if (size < ARENA_MIN_SIZE or agent is None or agent.closed
                or not self.host.store_capacity or self.objects.on_loop_thread()):
            return -1
        reply = asyncio.run_coroutine_threadsafe(
            agent.request(lambda r: P.AllocObject(r, oid, size), timeout=CONTROL_TIMEOUT),
            self.objects.loop)
        try:
            return reply.result().offset
        except Exception:  # the agent went away: a file still works
            return -1

    def delete_stored(self, oid: bytes, node_id: str) -> None:
        """Have the node agents remove an object this process owns from the store of
        ``node_id`` (its file or arena region, any spilled copy, copies on other nodes)."""
        self.host.tell_agent(
            P.ObjectsDeleted([oid], "" if node_id == self.host.node_id else node_id))
