"""A process's link to the head: a driver dials it when it starts, a worker when it first
needs it, and either dials it again once it has closed (a head with storage that
restarted, see docs/fault-tolerance.md). A driver comes back as the driver of its job, so
that the restarted head knows the job runs, and ends it when the driver exits.

Example:
    >>> HEAD_RECONNECT_TIMEOUT > 0
    True
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from ._link import Link

log = logging.getLogger("aray")

#: how long a driver dials again a head with storage that went away (its nodes wait as long)
HEAD_RECONNECT_TIMEOUT = float(os.environ.get("ARAY_HEAD_RECONNECT_TIMEOUT", "60"))


class HeadLink:
    """The link to the head of one process.

    Args:
        links: the process's links (``dial(address, role, ident, info)``).
        address: the head's.
        role: "driver" or "worker".
        ident: a worker's id.
        job_id: the driver's job, once it has one (a callable: it is the head's to give).
        spawn: runs a coroutine as a task of the process.
        closing: whether the process is closing.
    """

    def __init__(self, links: Any, address: str, role: str, ident: str,
                 job_id: Callable[[], str], spawn: Callable, closing: Callable[[], bool]
                 ) -> None:
        self.links = links
        self.address = address
        self.role = role
        self.ident = ident
        self._job_id = job_id
        self._spawn = spawn
        self._closing = closing
        self.link: Link | None = None
        self._dial: asyncio.Task | None = None
        self._driver_info: dict = {}  # a driver's Hello info, to come back as that driver

    async def start_driver(self, info: dict) -> Link:
        """A driver's first link, with its Hello ``info``."""
        self._driver_info = dict(info)
        self.link = await self.links.dial(self.address, "driver", "", info)
        self.link.on_close.append(self._lost)
        return self.link

    async def get(self) -> Link:
        """The link, dialled (again) when there is none open."""
        if self.link is not None and not self.link.closed:
            return self.link
        dial = self._dial
        if dial is None or dial.done() and (dial.exception() is not None
                                            or dial.result().closed):
            dial = self._dial = asyncio.get_running_loop().create_task(self._redial())
        link: Link = await asyncio.shield(dial)
        self.link = link
        return link

    async def _redial(self) -> Link:
        if self.role != "driver":
            return await self.links.dial(self.address, "core", self.ident, {})
        link = await self.links.dial(self.address, "driver", "",
                                     dict(self._driver_info, job_id=self._job_id()))
        link.on_close.append(self._lost)
        return link

    def _lost(self, link: Link) -> None:
        """A driver's link to a head with storage closed: dial it again (it restarts);
        what needs the head waits or fails meanwhile."""
        if not self._closing() and link.peer is not None \
                and link.peer.info.get("fault_tolerant"):
            self._spawn(self._rejoin(), name="rejoin the head")

    async def _rejoin(self) -> None:
        loop = asyncio.get_running_loop()
        delay, deadline = 0.1, loop.time() + HEAD_RECONNECT_TIMEOUT
        while not self._closing() and loop.time() < deadline:
            await asyncio.sleep(delay)
            try:
                await self.get()
                return
            except (OSError, ConnectionError):
                delay = min(delay * 2, 2.0)
        if not self._closing():
            log.error("the head at %s did not come back within %g s", self.address,
                      HEAD_RECONNECT_TIMEOUT)
