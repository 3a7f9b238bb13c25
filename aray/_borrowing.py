"""Borrowing: how a process tells an object's owner that it holds a ref to the object.

A process that unpickles a ref owned by another registers a hold with the owner
(``AddBorrower``) and releases it when its entry goes (``RemoveBorrower``); the owner keeps the
object while any such hold stands. A worker returning refs inside a result registers its
caller with their owners before it reports, and the caller's own registration then takes
over. What a process sends that could let another free an object waits until its earlier
registrations are answered (:meth:`Borrowers.after_registrations`). The owner's side of the
counts are holds in its :class:`~aray._objects.ObjectTable`.

:class:`Borrowers` is handed what it needs: the object table, this process's address, a way
to reach other processes (:class:`Peers`) and a way to run its requests (:class:`Spawner`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from . import _protocol as P
from ._link import CONTROL_TIMEOUT
from ._objects import ObjectEntry, ObjectTable, contained_refs
from ._refs import ObjectRef


class PeerLink(Protocol):
    """What borrowing needs of a link to another process."""

    def send(self, msg: Any) -> None: ...

    async def request(self, make: Callable[[int], Any], *, timeout: float | None) -> Any: ...


class Peers(Protocol):
    """Reaches another process by its address (a link dialled once and reused)."""

    async def __call__(self, address: str) -> PeerLink: ...


class Spawner(Protocol):
    """Runs a coroutine in a task owned by the process (cancelled at its end)."""

    def __call__(self, coro: Coroutine, name: str = "") -> asyncio.Task: ...


class Borrowers:
    """This process's borrower registrations, and the counts its owned objects keep of
    other processes'. Loop only.

    Examples:
        >>> import asyncio
        >>> async def main():
        ...     table = ObjectTable(asyncio.get_running_loop(), lambda e: None, lambda e: None)
        ...     table.bind_thread()
        ...     async def no_peers(address):
        ...         raise ConnectionError(address)
        ...     borrowers = Borrowers(table, "unix:/me", no_peers, asyncio.get_running_loop()
        ...                           .create_task, lambda oid, node: None)
        ...     entry = table.add(b"o" * 16)
        ...     borrowers.hold_at_owner(entry.oid, "unix:/me")  # our own object: a hold
        ...     return entry.holds
        >>> asyncio.run(main())
        1
    """

    def __init__(self, objects: ObjectTable, address: str, peer: Peers, spawn: Spawner,
                 delete_stored: Callable[[bytes, str], None]) -> None:
        self.objects = objects
        self.address = address
        self._peer = peer
        self._spawn = spawn
        # a result nobody waits for any more is deleted from the store of its node
        self._delete_stored = delete_stored
        self.unacked = 0  # AddBorrower requests sent and not yet answered
        self._after_acks: list[Callable[[], None]] = []  # what waits for them

    def borrowed(self, ref: ObjectRef) -> None:
        """This process unpickled a ref owned by another; register with its owner."""
        if ref._id not in self.objects.entries:
            self.borrowed_entry(ref._id, ref._owner)

    def borrowed_entry(self, oid: bytes, owner: str) -> ObjectEntry:
        """The entry of a ref ``owner`` owns, registered with the owner (once)."""
        entry = self.objects.add(oid, owned=False, owner=owner)
        if self.objects.mark_held_at_owner(entry):
            self.hold_at_owner(oid, owner)
        return entry

    def hold_at_owner(self, oid: bytes, owner: str) -> None:
        """Count one more holder of ``oid`` at its owner (this process, or a caller this
        process returns the ref to); pair with :meth:`release_at_owner`."""
        if owner == self.address:
            self.objects.hold_owned(oid)
            return
        self.unacked += 1
        self._spawn(self._register(owner, oid), "add borrower")

    async def _register(self, owner: str, oid: bytes) -> None:
        try:
            link = await self._peer(owner)
            await link.request(lambda r: P.AddBorrower(r, oid), timeout=CONTROL_TIMEOUT)
        except (ConnectionError, OSError):
            pass  # the owner is gone, and the object with it
        finally:
            self.unacked -= 1
            if self.unacked == 0:
                waiting, self._after_acks = self._after_acks, []
                for fn in waiting:
                    fn()

    def after_registrations(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once every AddBorrower sent so far is answered.

        What this process sends after registering (a task's result, a RemoveBorrower) may
        let another process release the object; the owner must have counted us first.
        """
        if self.unacked == 0:
            fn()
        else:
            self._after_acks.append(fn)

    def release_at_owner(self, oid: bytes, owner: str) -> None:
        """One holder counted by :meth:`hold_at_owner` let go."""
        if owner == self.address:
            self.objects.release_owned(oid)
            return
        self.after_registrations(lambda: self._remove_at(owner, oid))

    def _remove_at(self, owner: str, oid: bytes) -> None:
        self._spawn(self._send_remove(owner, oid), "")

    async def _send_remove(self, owner: str, oid: bytes) -> None:
        try:
            (await self._peer(owner)).send(P.RemoveBorrower(oid))
        except (ConnectionError, OSError):
            pass

    def _on_AddBorrower(self, link: PeerLink, msg: P.AddBorrower) -> None:
        self.objects.hold_owned(msg.object_id)
        link.send(P.BorrowerAdded(msg.req_id))

    def _on_RemoveBorrower(self, link: PeerLink, msg: P.RemoveBorrower) -> None:
        entry = self.objects.entries.get(msg.object_id)
        # a borrower's hold on an entry that was freed and made anew (as lost) was never
        # counted on this one: a message from another process, not our own bookkeeping
        if entry is not None and entry.owned and entry.holds > 0:
            self.objects.release(entry)

    def accept_value(self, oid: bytes, value: list) -> None:
        """A task's result for ``oid`` arrived. Refs inside it were registered for us by the
        worker; the result holds them while it lives (our own registration takes over from
        the worker's)."""
        entry = self.objects.entries.get(oid)
        held: list[ObjectRef[Any]] = [ObjectRef(c_oid, c_owner)
                                      for c_oid, c_owner in contained_refs(value)]
        for ref in held:
            if ref._owner != self.address:
                self.borrowed(ref)
        if entry is not None:
            self.objects.resolve(entry, value)
            if held:
                self.objects.hold_refs(entry, held)
        elif value[0] == "s":
            self._delete_stored(oid, value[1])  # nobody holds a ref to this result any more
        for ref in held:
            self.release_at_owner(ref._id, ref._owner)

    def on_unused(self, entry: ObjectEntry) -> None:
        """``entry`` left the table: a borrowed one lets go of its hold at the owner."""
        if entry.held_at_owner:
            self.release_at_owner(entry.oid, entry.owner)
