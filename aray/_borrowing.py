"""Borrowing: how a process tells an object's owner that it holds a ref to the object.

A process that unpickles a ref owned by another registers with the owner (``AddBorrower``)
and unregisters when its entry goes (``RemoveBorrower``); the owner keeps the object while
any registration stands. A worker returning refs inside a result registers its caller with
their owners before it reports, and the caller's own registration then takes over. What a
process sends that could let another free an object waits until its earlier registrations
are answered (:meth:`Borrowing.after_registrations`). See the ``_objects`` module for the
owner's side of the counts.

A mixin of :class:`aray._core.Core`, which provides ``objects``, ``address``, ``peer``,
``spawn`` and ``node_id``.
"""

from __future__ import annotations

from . import _protocol as P
from ._link import CONTROL_TIMEOUT, Link
from ._objects import ObjectEntry, contained_refs
from ._refs import ObjectRef


class Borrowing:
    """Loop-only methods; ``_unacked`` and ``_after_acks`` are set by the core."""

    def borrowed(self, ref: ObjectRef) -> None:
        """Loop only: this process unpickled a ref owned by another; register with its owner."""
        if ref._id not in self.objects.entries:
            self._borrowed_entry(ref._id, ref._owner)

    def _borrowed_entry(self, oid: bytes, owner: str) -> ObjectEntry:
        entry = self.objects.add(oid, owned=False, owner=owner)
        if self.objects.mark_held_at_owner(entry):
            self.register_for(oid, owner)
        return entry

    def register_for(self, oid: bytes, owner: str) -> None:
        """Loop only: count one more holder of ``oid`` at its owner (this process, or a
        caller this process returns the ref to); pair with :meth:`unregister`."""
        if owner == self.address:
            self.objects.hold_owned(oid)
            return
        self._unacked += 1
        self.spawn(self._register(owner, oid), name="add borrower")

    async def _register(self, owner: str, oid: bytes) -> None:
        try:
            link = await self.peer(owner)
            await link.request(lambda r: P.AddBorrower(r, oid), timeout=CONTROL_TIMEOUT)
        except (ConnectionError, OSError):
            pass  # the owner is gone, and the object with it
        finally:
            self._unacked -= 1
            if self._unacked == 0:
                waiting, self._after_acks = self._after_acks, []
                for fn in waiting:
                    fn()

    def after_registrations(self, fn) -> None:
        """Loop only: call ``fn`` once every AddBorrower sent so far is answered.

        What this process sends after registering (a task's result, a RemoveBorrower) may
        let another process release the object; the owner must have counted us first.
        """
        if self._unacked == 0:
            fn()
        else:
            self._after_acks.append(fn)

    def unregister(self, oid: bytes, owner: str) -> None:
        """Loop only: one holder counted by :meth:`register_for` let go."""
        if owner == self.address:
            self.objects.release_owned(oid)
            return
        self.after_registrations(lambda: self.spawn(self._send_remove(owner, oid)))

    async def _send_remove(self, owner: str, oid: bytes) -> None:
        try:
            (await self.peer(owner)).send(P.RemoveBorrower(oid))
        except (ConnectionError, OSError):
            pass

    def _on_AddBorrower(self, link: Link, msg: P.AddBorrower) -> None:
        self.objects.hold_owned(msg.object_id)
        link.send(P.BorrowerAdded(msg.req_id))

    def _on_RemoveBorrower(self, link: Link, msg: P.RemoveBorrower) -> None:
        entry = self.objects.entries.get(msg.object_id)
        # a borrower's hold on an entry that was freed and made anew (as lost) was never
        # counted on this one: a message from another process, not our own bookkeeping
        if entry is not None and entry.owned and entry.holds > 0:
            self.objects.release(entry)

    def accept_value(self, oid: bytes, value: list) -> None:
        """Loop only: a task's result for ``oid`` arrived. Refs inside it were registered
        for us by the worker; hold them while the result lives (our own registration takes
        over from the worker's)."""
        entry = self.objects.entries.get(oid)
        contained = contained_refs(value)
        held = [ObjectRef(c_oid, c_owner) for c_oid, c_owner in contained]
        for ref in held:
            if ref._owner != self.address:
                self.borrowed(ref)
        if entry is not None:
            self.objects.resolve(entry, value)
            if held:
                self.objects.hold_refs(entry, held)
        elif value[0] == "s":
            self.delete_stored(oid, value[1])  # nobody holds a ref to this result any more
        for ref in held:
            self.unregister(ref._id, ref._owner)
