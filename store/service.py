"""The node's object store accounting: capacity, what lives in memory, what was spilled.

Plain data and decisions, no I/O: the node agent tells it what was sealed and deleted, and
it answers which objects to spill so that shared memory stays within ``capacity``. Spilling
takes the least recently sealed objects first.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict


@dataclasses.dataclass
class StoredObject:
    object_id: bytes
    size: int
    spilled: bool = False
    spilling: bool = False
    owner: str = ""  # the process that owns it; its objects go when it exits
    offset: int = -1  # its region in the arena while it is in memory there, else -1


class StoreAccounts:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.objects: OrderedDict[bytes, StoredObject] = OrderedDict()
        self.used = 0  # bytes in shared memory
        self.spilled = 0  # bytes on disk

    def sealed(self, object_id: bytes, size: int, on_disk: bool = False,
               owner: str = "", offset: int = -1) -> list[bytes]:
        """Record a new object (in shared memory, or ``on_disk`` when memory was full);
        returns the objects to spill to make room."""
        if object_id in self.objects:
            return []
        self.objects[object_id] = StoredObject(object_id, size, spilled=on_disk, owner=owner,
                                               offset=offset)
        if on_disk:
            self.spilled += size
            return []
        self.used += size
        return self.to_spill()

    def to_spill(self) -> list[bytes]:
        over = self.used - sum(o.size for o in self.objects.values() if o.spilling) - self.capacity
        chosen = []
        for obj in self.objects.values():
            if over <= 0:
                break
            if not obj.spilled and not obj.spilling:
                obj.spilling = True
                chosen.append(obj.object_id)
                over -= obj.size
        return chosen

    def spill_done(self, object_id: bytes, ok: bool) -> None:
        obj = self.objects.get(object_id)
        if obj is None or not obj.spilling:
            return
        obj.spilling = False
        if ok:
            obj.spilled = True
            self.used -= obj.size
            self.spilled += obj.size

    def deleted(self, object_id: bytes) -> StoredObject | None:
        """Forget an object; returns what was known of it (None if nothing)."""
        obj = self.objects.pop(object_id, None)
        if obj is None:
            return None
        if obj.spilled:
            self.spilled -= obj.size
        else:
            self.used -= obj.size
        return obj

    def owned_by(self, owner: str) -> list[bytes]:
        """The objects of an owner (to delete them once it has exited)."""
        return [o.object_id for o in self.objects.values() if o.owner == owner]

    def stats(self) -> dict:
        return {
            "used_bytes": self.used,
            "capacity_bytes": self.capacity,
            "num_objects": len(self.objects),
            "spilled_bytes": self.spilled,
            "num_spilled": sum(1 for o in self.objects.values() if o.spilled),
        }

    def listing(self) -> list[dict]:
        return [{"object_id": o.object_id.hex(), "size": o.size, "spilled": o.spilled,
                 "owner": o.owner} for o in self.objects.values()]
