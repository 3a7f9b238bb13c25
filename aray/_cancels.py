"""Where ``aray.cancel(ref)`` goes: to the process that submitted the task or actor call
making ``ref``. That is the ref's owner: this process (its task submitter, else its actor
caller), or another core, which is sent ``CancelObject`` and cancels it there.

Example:
    >>> import asyncio
    >>> async def main():
    ...     sent = []
    ...     class Owner:  # the link to the process that owns the ref
    ...         def send(self, msg):
    ...             sent.append(type(msg).__name__)
    ...     async def peer(address):
    ...         return Owner()
    ...     tasks = []
    ...     spawn = lambda coro, name: tasks.append(asyncio.ensure_future(coro))
    ...     cancels = Cancels("unix:/me.sock", peer, spawn,
    ...                       lambda t, force, recursive: False, lambda t: False)
    ...     cancels.cancel(ObjectRef(bytes(16), "unix:/other.sock"), force=False)
    ...     await asyncio.gather(*tasks)
    ...     return sent
    >>> asyncio.run(main())
    ['CancelObject']
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from . import _protocol as P
from ._link import Link
from ._refs import ObjectRef

log = logging.getLogger("aray")


class Cancels:
    """Cancels the task or actor call that produces a ref (loop only).

    Args:
        address: this process's (the owner its own refs name).
        peer: ``await peer(address)`` gives the link to another process.
        spawn: ``spawn(coro, name)`` runs a coroutine as a task of the process.
        cancel_task: ``cancel_task(task_id, force, recursive)`` cancels a task this
            process submitted; False if it is not one (or no longer runs).
        cancel_call: ``cancel_call(task_id)`` cancels an actor call this process sent.

    Example:
        >>> cancels = Cancels("unix:/me.sock", None, None,
        ...                   lambda t, force, recursive: print("task", t.hex()) or True,
        ...                   lambda t: print("call", t.hex()))
        >>> cancels.cancel(ObjectRef(bytes(16), "unix:/me.sock"), force=False)
        task 000000000000000000000000
    """

    def __init__(self, address: str, peer: Callable[[str], Awaitable[Link]],
                 spawn: Callable[..., Any], cancel_task: Callable[[bytes, bool, bool], bool],
                 cancel_call: Callable[[bytes], Any]) -> None:
        self.address = address
        self._peer = peer
        self._spawn = spawn
        self._cancel_task = cancel_task
        self._cancel_call = cancel_call

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        """Loop only: cancel the task or actor call that produces ``ref``. A ref that
        another core owns (passed in, or returned by a task) is cancelled by that owner,
        which submitted the task."""
        if ref._owner and ref._owner != self.address:
            self._spawn(self._cancel_at_owner(ref._owner, ref._id, force, recursive),
                        name="cancel at owner")
            return
        self._cancel_own(ref._id, force, recursive)

    def _cancel_own(self, object_id: bytes, force: bool, recursive: bool) -> None:
        task_id = object_id[:12]  # (an object's id starts with its task's)
        if not self._cancel_task(task_id, force, recursive):
            self._cancel_call(task_id)

    async def _cancel_at_owner(self, owner: str, object_id: bytes, force: bool,
                               recursive: bool) -> None:
        try:
            link = await self._peer(owner)
        except (OSError, ConnectionError) as exc:  # an owner that is gone has no task to stop
            log.info("cancel: the owner %s of %s is unreachable (%s)", owner,
                     object_id.hex(), exc)
            return
        link.send(P.CancelObject(object_id, force, recursive))

    def _on_CancelObject(self, link: Link, msg: P.CancelObject) -> None:
        self._cancel_own(msg.object_id, msg.force, msg.recursive)
