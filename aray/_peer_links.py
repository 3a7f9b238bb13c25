"""A process's links to other processes: the server that accepts them, and dialled ones.

Every core listens on its own socket (other cores push tasks, call actors and ask for
objects there) and dials others once per address, reusing the link while it is open. A
node the head declares dead may hang with its sockets open, so its links are aborted rather
than waited for. Messages on every link go to one dispatcher (:attr:`PeerLinks.dispatch`,
set by the process once its components exist).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from . import _protocol as P
from ._link import Link, Server, connect


def _not_ready(link: Link, msg: Any) -> Any:
    raise RuntimeError(f"a {type(msg).__name__} arrived before this process could handle it")


class PeerLinks:
    """The links of one core (``role``: driver or worker) to other processes. Loop only.

    ``spawn`` runs a link's reader in a task of the process, ``on_closed(link)`` hears of
    every link to another core that closes, and ``dial_info()`` is what this process tells
    the cores it dials (its address, job, node...).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, token: str, role: str,
                 spawn: Callable[[Coroutine, str], asyncio.Task],
                 on_closed: Callable[[Link], None], dial_info: Callable[[], dict]) -> None:
        self.loop = loop
        self.role = role
        self._token = token
        self._spawn = spawn
        self._on_closed = on_closed
        self._dial_info = dial_info
        # (set once the process's components exist, before it listens or dials)
        self.dispatch: Callable[[Link, Any], Any] = _not_ready
        # quiet: what a worker logs reaches its user's terminal, which strangers knocking
        # on its port must not fill
        self._server = Server(token, self._accept, name=f"core[{role}]", quiet=True,
                              role="core")
        self._peers: dict[str, Link] = {}
        self._connecting: dict[str, asyncio.Future] = {}

    async def listen(self, address: str, sock: socket.socket | None = None) -> None:
        """Start serving other processes on ``address`` (or the bound TCP ``sock``)."""
        await self._server.start(address, sock)

    def _accept(self, link: Link, hello: P.Hello) -> dict:
        link.on_message = self.dispatch
        link.on_close.append(self._closed)
        return {"node_id": self._dial_info().get("node_id", "")}

    async def dial(self, address: str, role: str, ident: str, info: dict) -> Link:
        """A new link to ``address`` as ``role`` (its messages dispatched like the others)."""
        hello = P.Hello(P.PROTOCOL_VERSION, self._token, role, ident, os.getpid(), info)
        link = await connect(address, hello, name=f"{self.role}->{address}")
        link.on_message = self.dispatch
        self._spawn(link.run(), f"link {address}")
        return link

    async def peer(self, address: str) -> Link:
        """The link to another core, dialled once and reused."""
        link = self._peers.get(address)
        if link is not None and not link.closed:
            return link
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = self._connecting[address] = self.loop.create_future()
        try:
            link = await self.dial(address, "core", "", self._dial_info())
            link.on_close.append(self._closed)
            self._peers[address] = link
            pending.set_result(link)
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # mark retrieved
            raise
        finally:
            del self._connecting[address]
        return link

    def accepted(self) -> list[Link]:
        """The links other processes dialled to this one (callers of a worker)."""
        return list(self._server.links)

    def abort_node(self, node_id: str, reason: str) -> None:
        """Drop every link to the processes of ``node_id``, which died: a hung machine
        keeps its sockets open, and nothing sent there will be answered."""
        for link in [*self._peers.values(), *self._server.links]:
            if link.peer_node == node_id:
                link.abort(f"its node {node_id[:12]} died: {reason}")

    def _closed(self, link: Link) -> None:
        for address, peer in list(self._peers.items()):
            if peer is link:
                del self._peers[address]
        self._on_closed(link)

    async def aclose(self, *others: Link | None) -> None:
        """Close the dialled links, then ``others`` (the agent's, the head's), then the
        server with the links it accepted."""
        for link in [*self._peers.values(), *others]:
            if link is not None:
                await link.aclose()
        await self._server.aclose()
