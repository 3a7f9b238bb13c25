"""The node's object store service: allocation, sealing, freeing and spilling.

:class:`ObjectService` carries out what :class:`aray.store.service.StoreAccounts` decides:
it hands writers regions of the shared-memory arena, records seals, writes the objects the
accounts choose to disk ("spill": nothing else is called that), and frees what owners
delete. Copies made for other nodes are :mod:`.transfers`' business; it is told of drops.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable

from aray import _protocol as P
from aray._link import Link
from aray.store.arena import ArenaSpace
from aray.store.arena import supported as arena_supported
from aray.store.service import StoreAccounts
from aray.store.shm import ARENA_FILE, ShmDirectory

log = logging.getLogger("aray.node")

#: no capacity given: as good as unbounded (and no arena)
UNBOUNDED = 2**62

#: how many deletes of objects not sealed yet are remembered (a seal that comes later
#: than that many others is taken as a new object)
DELETED_EARLY_KEPT = 65536


class ObjectService:
    """The objects of one node, in its arena or files, and on disk once spilled.

    Args:
        store_dir: the node's shared-memory directory.
        session_dir: the session's directory (its ``spill`` folder takes spilled objects).
        capacity: bytes of shared memory for objects (0: unbounded).
        spawn_task: runs a coroutine as a task the agent owns.
        describe_owner: names an owner's address for people (in store listings).
    """

    def __init__(self, store_dir: str, session_dir: str, capacity: int,
                 spawn_task: Callable, describe_owner: Callable[[str], str]) -> None:
        self.store = ShmDirectory(store_dir, os.path.join(session_dir, "spill"))
        self.accounts = StoreAccounts(capacity or UNBOUNDED)
        self.arena: ArenaSpace | None = None  # made in open(), sized like the store
        self._store_dir = store_dir
        self._allocated: dict[bytes, tuple[int, int, Link]] = {}  # region not yet sealed
        #: objects deleted before their seal arrived: the owner learns of an object from its
        #: writer (a task's result, a stream's item) on another link than the one the seal
        #: takes to this agent, and may free it first. Its seal then frees it at once.
        self._deleted_early: OrderedDict[bytes, None] = OrderedDict()
        self._spawn_task = spawn_task
        self._describe_owner = describe_owner
        #: called with each object dropped, so that copies elsewhere go too
        self.on_drop: Callable[[bytes], None] = lambda _oid: None

    def open(self) -> None:
        """Map the arena (when the platform has one and the capacity is bounded)."""
        if arena_supported() and self.accounts.capacity < UNBOUNDED:
            self.arena = ArenaSpace(os.path.join(self._store_dir, ARENA_FILE),
                                    self.accounts.capacity)

    def close(self) -> None:
        """Unmap the arena."""
        if self.arena is not None:
            self.arena.close()

    # --- writers -------------------------------------------------------------------------
    def _on_AllocObject(self, link: Link, msg: P.AllocObject) -> None:
        offset = -1 if self.arena is None else self.arena.allocate(msg.size)
        if offset >= 0:
            self._allocated[msg.object_id] = (offset, msg.size, link)
        link.send(P.ObjectAllocated(msg.req_id, offset))

    def free_unsealed(self, link: Link) -> None:
        """Regions a writer was given and never sealed (it died or left): free them."""
        for object_id, (offset, size, writer) in list(self._allocated.items()):
            if writer is link and self.arena is not None:
                del self._allocated[object_id]
                self.arena.release(offset, size)

    def _on_ObjectSealed(self, link: Link, msg: P.ObjectSealed) -> None:
        self._allocated.pop(msg.object_id, None)
        if msg.object_id in self._deleted_early:  # its owner freed it already
            del self._deleted_early[msg.object_id]
            if msg.offset >= 0 and self.arena is not None:
                self.arena.release(msg.offset, msg.size)
            self.store.delete(msg.object_id)
            return
        if msg.object_id in self.accounts.objects:
            # written twice (a retried task): keep the first copy
            if msg.offset >= 0 and self.arena is not None:
                self.arena.release(msg.offset, msg.size)
            return
        self.sealed(msg.object_id, msg.size, msg.on_disk, msg.owner, msg.offset)

    def sealed(self, object_id: bytes, size: int, on_disk: bool, owner: str,
               offset: int) -> None:
        """Record a complete object, and spill what the accounts say must make room."""
        for spill in self.accounts.sealed(object_id, size, on_disk, owner, offset):
            self._spawn_task(self._spill(spill), "spill")

    async def _spill(self, object_id: bytes) -> None:
        loop = asyncio.get_running_loop()
        obj = self.accounts.objects[object_id]
        region = obj.offset
        try:
            if region >= 0:
                assert self.arena is not None
                await loop.run_in_executor(None, self.store.spill_from_arena, object_id,
                                           self.arena, region, obj.size)
                ok = True
            else:
                ok = await loop.run_in_executor(None, self.store.spill, object_id)
        except OSError:
            log.exception("could not spill object %s", object_id.hex())
            ok = False
        deleted = self.accounts.objects.get(object_id) is not obj
        if region >= 0 and (ok or deleted):
            assert self.arena is not None
            self.arena.release(region, obj.size)  # readers that mapped it keep their view
            obj.offset = -1
            if deleted:
                self.store.delete(object_id)  # deleted while we copied: drop the copy
        if deleted or (not ok and region < 0):
            self.accounts.deleted(object_id)  # (file) deleted meanwhile
        else:
            self.accounts.spill_done(object_id, ok)

    # --- readers -------------------------------------------------------------------------
    def offset_of(self, object_id: bytes) -> int | None:
        """The object's arena offset (-1: in a file or on disk), or None if unknown."""
        obj = self.accounts.objects.get(object_id)
        return None if obj is None else obj.offset

    def read(self, object_id: bytes, start: int, length: int) -> bytes:
        """``length`` bytes of an object from ``start``, from its region or its file.

        An object not accounted yet is read too: its writer's ObjectSealed may still be
        on the way (a reader learns the location only after the write, so the bytes are
        there).

        Raises:
            FileNotFoundError: the object is not here (any more).
        """
        offset = self.offset_of(object_id)
        if offset is None:
            offset = self._allocated.get(object_id, (-1,))[0]
        if offset >= 0:
            assert self.arena is not None
            return self.arena.read_at(offset, start, length)
        return self.store.read_range(object_id, start, length)

    # --- freeing -------------------------------------------------------------------------
    def delete_objects_of(self, owner: str) -> None:
        """Drop every object ``owner`` made (it exited: its objects die with it)."""
        for object_id in self.accounts.owned_by(owner):
            self.drop(object_id)

    def drop(self, object_id: bytes) -> None:
        """Free an object here (and, through ``on_drop``, its copies elsewhere)."""
        self.on_drop(object_id)
        obj = self.accounts.deleted(object_id)
        if obj is None:  # not sealed here yet (or never will be): see _deleted_early
            self._deleted_early[object_id] = None
            if len(self._deleted_early) > DELETED_EARLY_KEPT:
                self._deleted_early.popitem(last=False)
        self.store.delete(object_id)
        # a region being copied to disk is freed when the copy is done (see _spill)
        if obj is not None and obj.offset >= 0 and not obj.spilling and self.arena is not None:
            self.arena.release(obj.offset, obj.size)

    # --- stats ---------------------------------------------------------------------------
    def _on_GetStoreStats(self, link: Link, msg: P.GetStoreStats) -> None:
        stats = self.accounts.stats()
        # arena regions taken, whether by live objects, unsealed writes or pinned freed ones
        stats["arena_bytes"] = self.arena.size if self.arena is not None else 0
        stats["arena_in_use_bytes"] = self.arena.allocator.in_use if self.arena is not None else 0
        listing = self.accounts.listing()
        for obj in listing:
            obj["owner"] = self._describe_owner(obj["owner"])
        link.send(P.StoreStats(msg.req_id, stats, listing))
