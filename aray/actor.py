"""Ray's ``ray.actor`` module under aray's name: :func:`exit_actor`, and the actor classes.

Code written for Ray imports from here (``from ray.actor import ActorHandle``,
``ray.actor.exit_actor()``); the same names live at the top of :mod:`aray`.
"""

from __future__ import annotations

import asyncio
from typing import NoReturn

from ._actors import ActorClass, ActorHandle, ActorMethod, ActorProxy, method
from ._runtime_context import current_task
from .exceptions import AsyncioActorExit

__all__ = ["ActorClass", "ActorExit", "ActorHandle", "ActorMethod", "ActorProxy", "exit_actor",
           "method"]


class ActorExit(SystemExit):
    """What :func:`exit_actor` raises in a sync method: a ``SystemExit``, so that
    ``except Exception`` in the method lets it through, as in Ray."""


def exit_actor() -> NoReturn:
    """End the actor this is called in, from inside one of its methods.

    The call that exits and every call not answered yet raise
    :class:`~aray.exceptions.ActorDiedError` (Ray's ``RayActorError``) at their callers; the
    actor's process runs its ``atexit`` handlers and exits, and the actor is dead for good:
    it is not restarted, whatever its ``max_restarts``. To end an actor from outside, use
    ``aray.kill(handle)`` (at once) or ``handle.__ray_terminate__.remote()`` (after the calls
    made before). It raises (``ActorExit``, a ``SystemExit``; in an async actor Ray's
    ``AsyncioActorExit``) to leave the method: do not catch that.

    Raises TypeError outside an actor's method (in a driver or a task).

    Examples:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> @aray.remote
        ... class Job:
        ...     def finish(self):
        ...         aray.actor.exit_actor()
        >>> job = Job.remote()
        >>> try:
        ...     aray.get(job.finish.remote())
        ... except aray.exceptions.ActorDiedError as err:
        ...     print("exited" if "exit_actor()" in str(err) else err)
        exited
    """
    task = current_task.get()
    if task is None or not task.actor_id:
        raise TypeError(
            "exit_actor() ends the actor it is called in: call it inside a method of an "
            "actor. To end an actor from outside, use aray.kill(handle), or "
            "handle.__ray_terminate__.remote() to end it after the calls made before.")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ActorExit(0) from None
    # on an event loop a SystemExit would stop the loop, not the actor: Ray's exception
    raise AsyncioActorExit("exit_actor() was called")
