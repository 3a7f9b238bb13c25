"""Objects moving between nodes: pulling a copy here, serving reads of ours to others.

:class:`Transfers` pulls an object from the node that holds it in chunks (a few at a time),
once however many processes here ask, into the arena or a file; it serves other nodes'
``ReadObject`` chunks, remembers which nodes copied our objects so that the copies go when
the object does, and keeps one link per other node's agent.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from aray import _protocol as P
from aray._link import CHUNK_TIMEOUT, Link, connect

from .objects import ObjectService

#: objects travel between nodes in chunks of PULL_CHUNK bytes, PULL_WINDOW at a time
PULL_CHUNK = 4 * 2**20
PULL_WINDOW = 4


class Transfers:
    """Copies of objects between this node and the others.

    Args:
        objects: this node's object service.
        hello: the Hello this node's agent greets other agents with.
        address_of: another node's agent address by node id (None: not in the cluster).
        spawn_task: runs a coroutine as a task the agent owns.
    """

    def __init__(self, objects: ObjectService, hello: P.Hello,
                 address_of: Callable[[str], str | None], spawn_task: Callable) -> None:
        self.objects = objects
        self._hello = hello
        self._address_of = address_of
        self._spawn_task = spawn_task
        #: hands what other agents send to the agent's handlers (set by the agent)
        self.dispatch: Callable | None = None
        self._agents: dict[str, asyncio.Future] = {}  # links to other nodes' agents
        self._pulls: dict[bytes, asyncio.Future] = {}  # copies being pulled from other nodes
        self._copies: dict[bytes, set[Link]] = {}  # our objects other nodes hold copies of
        objects.on_drop = self._drop_copies

    # --- pulling -------------------------------------------------------------------------
    def _on_PullObject(self, link: Link, msg: P.PullObject):
        return self._answer_pull(link, msg)  # run by the link, which answers if it fails

    async def _answer_pull(self, link: Link, msg: P.PullObject) -> None:
        try:
            offset, error = await self._local_copy(msg.object_id, msg.node_id, msg.size), ""
        except (LookupError, ConnectionError, OSError) as exc:
            offset, error = -1, str(exc)
        if not link.closed:
            link.send(P.ObjectPulled(msg.req_id, offset, error))

    async def _local_copy(self, object_id: bytes, node_id: str, size: int) -> int:
        """This node's copy of an object (pulled once, however many ask): its arena offset."""
        offset = self.objects.offset_of(object_id)
        if offset is not None:
            return offset
        pull = self._pulls.get(object_id)
        if pull is None:
            pull = self._pulls[object_id] = asyncio.ensure_future(
                self._pull(object_id, node_id, size))
            pull.add_done_callback(lambda _f: self._pulls.pop(object_id, None))
        return await asyncio.shield(pull)

    async def _pull(self, object_id: bytes, node_id: str, size: int) -> int:
        address = self._address_of(node_id)
        if address is None:
            raise LookupError(f"object {object_id.hex()} was on node {node_id[:12]}, which has "
                              "left the cluster")
        link = await self.agent_link(address)
        store, arena = self.objects.store, self.objects.arena
        offset = arena.allocate(size) if arena is not None else -1
        if offset < 0:
            fd, tmp = store.begin_file(object_id)

        def write(start: int, data: bytes) -> None:
            if arena is not None and offset >= 0:
                arena.write_at(offset, start, data)
            else:
                os.pwrite(fd, data, start)
        window = asyncio.Semaphore(PULL_WINDOW)

        async def chunk(start: int) -> None:
            async with window:  # at most PULL_WINDOW chunks in memory at once
                reply = await link.request(lambda r: P.ReadObject(
                    r, object_id, start, min(PULL_CHUNK, size - start)), timeout=CHUNK_TIMEOUT)
                if reply.error:
                    raise LookupError(reply.error)
                write(start, reply.data)

        ok = False
        try:
            await asyncio.gather(*(chunk(s) for s in range(0, size, PULL_CHUNK)))
            ok = True
        finally:
            if offset >= 0:
                assert arena is not None
                if ok:
                    arena.seal(offset, object_id, size)
                else:
                    arena.release(offset, size)
            else:
                store.end_file(object_id, fd, tmp, ok)
        self.objects.sealed(object_id, size, False, "", offset)
        return offset

    # --- serving -------------------------------------------------------------------------
    def _on_ReadObject(self, link: Link, msg: P.ReadObject) -> None:
        data, error = b"", ""
        try:
            data = self.objects.read(msg.object_id, msg.start, msg.length)
        except FileNotFoundError:
            error = (f"object {msg.object_id.hex()} is no longer on node "
                     f"{self._hello.ident[:12]}: its owner freed it")
        if not error and msg.start == 0:
            self._copies.setdefault(msg.object_id, set()).add(link)
        link.send(P.ObjectChunk(msg.req_id, data, error))

    def _drop_copies(self, object_id: bytes) -> None:
        for holder in self._copies.pop(object_id, ()):  # copies on other nodes go too
            if not holder.closed:
                holder.send(P.ObjectsDeleted([object_id], ""))

    # --- links to other agents -----------------------------------------------------------
    def forward(self, node_id: str, msg) -> None:
        """Send ``msg`` to another node's agent, if that node is in the cluster."""
        address = self._address_of(node_id)
        if address is not None:
            self._spawn_task(self._forward(address, msg), "forward")

    async def _forward(self, address: str, msg) -> None:
        try:
            (await self.agent_link(address)).send(msg)
        except (ConnectionError, OSError):
            pass  # that node is gone, and its store with it

    async def agent_link(self, address: str) -> Link:
        """The link to another node's agent, dialled once."""
        pending = self._agents.get(address)
        if pending is not None and pending.done() and (
                pending.exception() is not None or pending.result().closed):
            pending = None
        if pending is None:
            pending = self._agents[address] = asyncio.ensure_future(self._dial(address))
        return await asyncio.shield(pending)

    async def _dial(self, address: str) -> Link:
        link = await connect(address, self._hello, name=f"node->{address}")
        assert self.dispatch is not None  # the agent sets it before it serves anything
        link.on_message = self.dispatch
        self._spawn_task(link.run(), f"link {address}")
        return link

    def abort_links_to(self, node_id: str, reason: str) -> None:
        """That node died: drop our links to its agent."""
        for pending in list(self._agents.values()):
            if pending.done() and not pending.cancelled() and pending.exception() is None:
                agent = pending.result()
                if agent.peer_node == node_id:
                    agent.abort(f"its node {node_id[:12]} died: {reason}")
