"""Objects stored on other nodes: copies pulled to this node before they are read.

A process reads an object of another node from a copy in its own node's store, which that
node's agent pulls once (``PullObject``) however many processes ask. A driver in client mode
has no store: it downloads the bytes from the agent of the object's node (``ReadObject``).
When the copy cannot be had because the node is gone, the owner of a task's result runs the
task again (lineage) and reads the new copy.

:class:`Fetcher` also reads values: inline ones, ones in this node's store, and copies. It is
handed the object table, this node's store, a way to rebuild a lost object, and the few
things of its process it uses (:class:`FetchHost`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from . import _protocol as P
from ._link import CHUNK_TIMEOUT, Link
from ._objects import ObjectEntry, ObjectState, ObjectTable
from .exceptions import ObjectLostError
from .store._serialize import deserialize
from .store.shm import ShmDirectory

#: how many copies of other nodes' objects a process remembers the place of
MAX_COPIES_KNOWN = 10_000
#: a driver in client mode keeps at most this many bytes of downloaded objects
MAX_DOWNLOADED_BYTES = 256 * 2**20
#: a driver in client mode downloads objects in chunks of this size
DOWNLOAD_CHUNK = 4 * 2**20


class CopyCache:
    """Where this process finds its copies of other nodes' objects: an offset in its own
    node's store, or (client mode) the downloaded bytes. Bounded by count and by bytes
    held; the oldest go first (they are fetched again if read again)."""

    def __init__(self, max_count: int = MAX_COPIES_KNOWN,
                 max_bytes: int = MAX_DOWNLOADED_BYTES) -> None:
        self._copies: collections.OrderedDict[bytes, object] = collections.OrderedDict()
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.bytes = 0  # of downloaded copies held

    def __contains__(self, oid: bytes) -> bool:
        return oid in self._copies

    def __len__(self) -> int:
        return len(self._copies)

    def get(self, oid: bytes):
        """Where the copy of ``oid`` is (an offset, or bytes), or None."""
        return self._copies.get(oid)

    def put(self, oid: bytes, copy) -> None:
        """Remember a copy; the oldest go while over the bounds."""
        self.pop(oid)
        self._copies[oid] = copy
        if isinstance(copy, bytes):
            self.bytes += len(copy)
        while len(self._copies) > 1 and (len(self._copies) > self.max_count
                                         or self.bytes > self.max_bytes):
            self.pop(next(iter(self._copies)))

    def pop(self, oid: bytes) -> None:
        """Forget the copy of ``oid``, if any."""
        copy = self._copies.pop(oid, None)
        if isinstance(copy, bytes):
            self.bytes -= len(copy)


class FetchHost(Protocol):
    """What fetching needs of its process (known once the process has started)."""

    node_id: str  # this process's node
    client: bool  # a driver outside the cluster: no store, downloads instead
    agent: Link | None  # this node's agent

    async def wait_ready(self) -> None: ...

    async def peer(self, address: str) -> Link: ...

    async def cluster_state(self) -> list[dict]: ...


class Fetcher:
    """Copies of other nodes' objects for this process, and the reading of values.

    ``rebuild(oid)`` runs again the task that made a lost object this process owns (True
    once its results are resolved anew, False if there is no such task).
    """

    def __init__(self, host: FetchHost, objects: ObjectTable, store: ShmDirectory,
                 loop: asyncio.AbstractEventLoop,
                 rebuild: Callable[[bytes], Awaitable[bool]]) -> None:
        self.host = host
        self.objects = objects
        self.store = store
        self.loop = loop
        self._rebuild = rebuild
        # objects of other nodes this node has a copy of: oid -> offset of the copy (in client
        # mode, the downloaded bytes)
        self.copies = CopyCache()
        self._errors: dict[bytes, str] = {}  # why a copy could not be had

    # --- reading --------------------------------------------------------------------------
    def materialize(self, entry: ObjectEntry) -> Any:
        """Any thread: the value of a resolved entry (deserialized anew), or raise its
        error."""
        if entry.state is ObjectState.FAILED:
            raise entry.error  # type: ignore[misc]
        if entry.data is not None:
            return deserialize(entry.data)
        return self.read_stored(entry.oid, entry.location)

    def read_stored(self, oid: bytes, location) -> Any:
        """Any thread: the value of an object in a store (this node's, or a copy of
        another's; off the loop, fetched first if need be)."""
        node_id, size, offset = location[:3]
        if node_id != self.host.node_id:  # read this node's copy
            copy = self.copies.get(oid)
            if copy is None:
                if self.objects.on_loop_thread():  # fetch() ran, and failed
                    raise ObjectLostError(self._errors.get(oid) or (
                        f"object {oid.hex()} of node {node_id[:12]} could not be fetched"))
                asyncio.run_coroutine_threadsafe(self.fetch(oid, location), self.loop).result()
                entry = self.objects.entries.get(oid)
                if entry is not None and entry.location != tuple(location[:3]):  # rebuilt
                    return self.materialize(entry)
                copy = self.copies.get(oid)
                if copy is None:  # pushed out by other copies meanwhile: a rare race
                    return self.read_stored(oid, location)
            if isinstance(copy, bytes):  # client mode: downloaded
                return deserialize(copy)
            offset = copy
        try:
            return deserialize(self.store.read(oid, offset, size))
        except FileNotFoundError:
            raise ObjectLostError(f"object {oid.hex()} is no longer in the object store") from None

    def value_of_resolved(self, oid: bytes, value: list) -> Any:
        """Deserialize a resolved value received from another process (worker side)."""
        if value[0] == "v":
            return deserialize(value[1])
        if value[0] == "s":
            return self.read_stored(oid, value[1:])
        raise ValueError("an error value has no payload")

    def forget(self, oid: bytes) -> None:
        """The object is gone here: so is the place of its copy."""
        self.copies.pop(oid)

    # --- fetching -------------------------------------------------------------------------
    def prepare(self, entry: ObjectEntry):
        """For the object table: what to await before reading ``entry`` on the loop."""
        return self.fetch(entry.oid, entry.location) if self.needs_fetch(entry) else None

    def needs_fetch(self, entry: ObjectEntry) -> bool:
        """Any thread: is ``entry`` stored on another node, with no copy here yet?"""
        loc = entry.location
        return loc is not None and loc[0] != self.host.node_id and entry.oid not in self.copies

    async def fetch(self, oid: bytes, location) -> None:
        """Loop only: have this node's agent pull a copy of an object stored on another node
        (once per node, however many processes ask)."""
        host = self.host
        if oid in self.copies or location[0] == host.node_id:
            return
        await host.wait_ready()
        assert host.agent is not None
        if host.client:
            error = await self._download(oid, location)
        else:
            # as long as the transfer takes: the agent gives each chunk a deadline
            reply = await host.agent.request(
                lambda r: P.PullObject(r, oid, location[0], location[1]), timeout=None)
            error = reply.error
            if not error:
                self.copies.put(oid, reply.offset)
        if error:
            entry = self.objects.entries.get(oid)
            if entry is not None and entry.owned and await self._rebuild(oid):
                if entry.state is ObjectState.READY:  # rebuilt: maybe on another node
                    return await self.fetch(oid, entry.location)
                return  # the task failed this time: reading raises its error
            self._errors[oid] = error
            while len(self._errors) > MAX_COPIES_KNOWN:
                self._errors.pop(next(iter(self._errors)))
            raise ObjectLostError(error)

    async def _download(self, oid: bytes, location) -> str:
        """Client mode: the object's bytes, in chunks, from the agent of its node; returns
        an error message ("" when it worked). The bytes replace the copy in a store."""
        node_id, size = location[0], location[1]
        nodes = await self.host.cluster_state()
        address = next((n["AgentAddress"] for n in nodes
                        if n["NodeID"] == node_id and n["Alive"]), None)
        if address is None:
            return f"object {oid.hex()} was on node {node_id[:12]}, which has left the cluster"
        data = bytearray(size)
        try:
            link = await self.host.peer(address)
            for start in range(0, size, DOWNLOAD_CHUNK):
                read = functools.partial(P.ReadObject, object_id=oid, start=start,
                                         length=min(DOWNLOAD_CHUNK, size - start))
                reply = await link.request(read, timeout=CHUNK_TIMEOUT)
                if reply.error:
                    return reply.error
                data[start:start + len(reply.data)] = reply.data
        except (ConnectionError, OSError) as exc:
            return f"could not download object {oid.hex()} from node {node_id[:12]}: {exc}"
        self.copies.put(oid, bytes(data))
        return ""

    def _on_ObjectsDeleted(self, link: Link, msg: P.ObjectsDeleted) -> None:
        """Client mode: a node agent says objects we downloaded were freed by their owner."""
        for oid in msg.object_ids:
            self.copies.pop(oid)

    async def fetch_entries(self, entries: list[ObjectEntry]) -> None:
        """Loop only: fetch every entry that is stored on another node (errors are left
        for the read to raise)."""
        wanted = [e for e in entries if e.state is ObjectState.READY and self.needs_fetch(e)]
        if wanted:
            await asyncio.gather(*(self.fetch(e.oid, e.location) for e in wanted),
                                 return_exceptions=True)

    async def fetch_values(self, deps: list) -> None:
        """Loop only: fetch the task arguments (``[oid, resolved value]``) of other nodes."""
        node_id = self.host.node_id
        remote = [(oid, v[1:4]) for oid, v in deps if v[0] == "s" and v[1] != node_id]
        if remote:
            await asyncio.gather(*(self.fetch(oid, loc) for oid, loc in remote))
