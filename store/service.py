"""The node's object store accounting: capacity, what lives in memory, what was spilled.

Plain data and decisions, no I/O: the node agent tells it what was sealed and deleted, and
it answers which objects to spill so that shared memory stays within ``capacity``. Spilling
takes the least recently sealed objects first.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict


class ObjectState(enum.Enum):
    """Where an object's bytes are: IN_MEMORY -> SPILLING (being written to disk, still in
    memory) -> ON_DISK; a failed write goes back to IN_MEMORY."""

    IN_MEMORY = 0
    SPILLING = 1
    ON_DISK = 2


@dataclasses.dataclass
class StoredObject:
    """One object of the store, as the accounts know it."""

    object_id: bytes
    size: int
    state: ObjectState = ObjectState.IN_MEMORY
    owner: str = ""  # the process that owns it; its objects go when it exits
    offset: int = -1  # its region in the arena while it is in memory there, else -1

    @property
    def spilled(self) -> bool:
        """Its bytes are on disk only."""
        return self.state is ObjectState.ON_DISK

    @property
    def spilling(self) -> bool:
        """It is being written to disk."""
        return self.state is ObjectState.SPILLING


class StoreAccounts:
    """The bytes a node's objects take in shared memory and on disk, and what to spill.

    Every operation costs O(1) per object it touches, whatever the number of objects held:
    the objects still in memory are kept in seal order (the spill order), and the bytes
    being spilled, the objects on disk and each owner's objects are counted as they change,
    never recounted.

    Examples:
        >>> acc = StoreAccounts(capacity=100)
        >>> acc.sealed(b"a", 60), acc.sealed(b"b", 60)
        ([], [b'a'])
        >>> acc.spill_done(b"a", True); acc.stats()["spilled_bytes"]
        60
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.objects: dict[bytes, StoredObject] = {}
        self.used = 0  # bytes in shared memory (objects being spilled included)
        self.spilled = 0  # bytes on disk
        self._in_memory: OrderedDict[bytes, None] = OrderedDict()  # IN_MEMORY, oldest first
        self._spilling = 0  # bytes of the objects being written to disk
        self._num_spilled = 0
        self._by_owner: dict[str, dict[bytes, None]] = {}

    def sealed(self, object_id: bytes, size: int, on_disk: bool = False,
               owner: str = "", offset: int = -1) -> list[bytes]:
        """Record a new object (in shared memory, or ``on_disk`` when memory was full);
        returns the objects to spill to make room."""
        if object_id in self.objects:
            return []
        state = ObjectState.ON_DISK if on_disk else ObjectState.IN_MEMORY
        self.objects[object_id] = StoredObject(object_id, size, state, owner=owner,
                                               offset=offset)
        self._by_owner.setdefault(owner, {})[object_id] = None
        if on_disk:
            self.spilled += size
            self._num_spilled += 1
            return []
        self.used += size
        self._in_memory[object_id] = None
        return self.to_spill()

    def to_spill(self) -> list[bytes]:
        """The least recently sealed objects in memory to write to disk, so that memory use
        (not counting objects being written already) stays within capacity; they are
        marked SPILLING."""
        over = self.used - self._spilling - self.capacity
        chosen = []
        while over > 0 and self._in_memory:
            object_id, _ = self._in_memory.popitem(last=False)
            obj = self.objects[object_id]
            obj.state = ObjectState.SPILLING
            self._spilling += obj.size
            chosen.append(object_id)
            over -= obj.size
        return chosen

    def spill_done(self, object_id: bytes, ok: bool) -> None:
        """An object's write to disk ended: it is ON_DISK (``ok``), or IN_MEMORY again and
        last in the spill order (so that a disk that keeps failing is not retried at once
        with the same object)."""
        obj = self.objects.get(object_id)
        if obj is None or obj.state is not ObjectState.SPILLING:
            return
        self._spilling -= obj.size
        if ok:
            obj.state = ObjectState.ON_DISK
            self.used -= obj.size
            self.spilled += obj.size
            self._num_spilled += 1
        else:
            obj.state = ObjectState.IN_MEMORY
            self._in_memory[object_id] = None

    def deleted(self, object_id: bytes) -> StoredObject | None:
        """Forget an object; returns what was known of it (None if nothing)."""
        obj = self.objects.pop(object_id, None)
        if obj is None:
            return None
        owned = self._by_owner.get(obj.owner)
        if owned is not None:
            owned.pop(object_id, None)
            if not owned:
                del self._by_owner[obj.owner]
        if obj.state is ObjectState.ON_DISK:
            self.spilled -= obj.size
            self._num_spilled -= 1
            return obj
        self.used -= obj.size
        if obj.state is ObjectState.SPILLING:
            self._spilling -= obj.size
        else:
            self._in_memory.pop(object_id, None)
        return obj

    def owned_by(self, owner: str) -> list[bytes]:
        """The objects of an owner (to delete them once it has exited)."""
        return list(self._by_owner.get(owner, ()))

    def stats(self) -> dict:
        """Bytes and counts, as ``aray memory`` and the dashboard show them."""
        return {
            "used_bytes": self.used,
            "capacity_bytes": self.capacity,
            "num_objects": len(self.objects),
            "spilled_bytes": self.spilled,
            "num_spilled": self._num_spilled,
        }

    def listing(self) -> list[dict]:
        """One dict per object: id (hex), size, whether spilled, owner."""
        return [{"object_id": o.object_id.hex(), "size": o.size, "spilled": o.spilled,
                 "owner": o.owner} for o in self.objects.values()]
