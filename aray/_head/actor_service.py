"""The head's actor messages: they become events of the actor lifecycle
(:mod:`~aray._head.lifecycle`), whose instructions become messages again.

Example:
    >>> from aray._head.server import Head
    >>> service = Head("token").actor_service
    >>> sorted(service.carry_out)[:2]
    ['GiveUpLater', 'KillOnNode']
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _protocol as P
from .._link import Link
from . import lifecycle as L

if TYPE_CHECKING:
    from .server import Head

#: how long a WaitActor for an actor id the head has never heard of is held before "no such
#: actor"
UNKNOWN_ACTOR_GRACE = 10.0


class ActorService:
    """The actor messages of a :class:`~aray._head.server.Head` (see the module's
    docstring)."""

    def __init__(self, head: Head) -> None:
        self.head = head
        self.lifecycle = L.ActorLifecycle(head.actors, head.nodes, head.placement_groups)
        handlers: dict[type, Callable[[Any], None]] = {
            L.Place: lambda i: self._send_to_node(i.node_id, P.CreateActor(
                i.actor_id, self._spec_for_worker(i.actor_id, i.spec))),
            L.Withdraw: lambda i: self._send_to_node(i.node_id, P.WithdrawActor(i.actor_id)),
            L.KillOnNode: lambda i: self._send_to_node(
                i.node_id, P.KillActor(0, i.actor_id, i.no_restart)),
            L.Reply: self._reply, L.RegistrationAnswered: self._answer_registration,
            L.GiveUpLater: self._give_up_later,
            L.WarnDriver: lambda i: self.warn_driver(i.actor_id, i.message),
        }
        self._handlers = handlers
        #: the instructions it carries out, by name (for reading)
        self.carry_out = {cls.__name__: fn for cls, fn in handlers.items()}

    def event(self, event) -> None:
        """Hand an event to the lifecycle and carry out what it decides."""
        for instruction in self.lifecycle.handle(event):
            self._handlers[type(instruction)](instruction)
        recovery = self.head.recovery
        if recovery is not None:  # (events without an actor id may touch many)
            recovery.actors_changed(getattr(event, "actor_id", None))

    # --- messages ------------------------------------------------------------------------
    def _on_RegisterActor(self, link: Link, msg: P.RegisterActor) -> None:
        namespace = self.head.jobs.namespace(msg.job_id, msg.namespace)
        self.event(L.Registered(msg.actor_id, msg.name, namespace, msg.job_id, msg.meta,
                                msg.get_if_exists, (link, msg.req_id)))

    def _on_CreateActor(self, link: Link, msg: P.CreateActor) -> None:
        self.event(L.Created(msg.actor_id, msg.spec))

    def _on_ActorStarted(self, link: Link, msg: P.ActorStarted) -> None:
        if msg.error is not None:
            self.event(L.StartFailed(msg.actor_id, msg.node_id, msg.error))
        else:
            self.event(L.Started(msg.actor_id, msg.node_id, msg.address, msg.worker_id,
                                 msg.pid))

    def _on_ActorDied(self, link: Link, msg: P.ActorDied) -> None:
        self.event(L.Died(msg.actor_id, msg.reason))

    def _on_WaitActor(self, link: Link, msg: P.WaitActor) -> None:
        self.event(L.WaitRequested(msg.actor_id, (link, msg.req_id)))

    def _on_KillActor(self, link: Link, msg: P.KillActor) -> None:
        """Kill an actor; the reply comes once it is down (dead, or restarting), so calls
        made after ``aray.kill()`` returns cannot reach the old instance."""
        record = self.head.actors.actors.get(msg.actor_id)
        itself = (record is not None and bool(record.worker_id)
                  and getattr(link.peer, "ident", "") == record.worker_id)
        cause = ("it ended itself (exit_actor() or __ray_terminate__)" if itself
                 else "it was killed with aray.kill()")
        self.event(L.KillRequested(msg.actor_id, msg.no_restart, (link, msg.req_id), cause))

    def _on_LookupActor(self, link: Link, msg: P.LookupActor) -> None:
        record = self.head.actors.lookup(msg.name,
                                         self.head.jobs.namespace(msg.job_id, msg.namespace))
        link.send(P.ActorInfo(msg.req_id, record.describe() if record else {}))

    def _on_LeaseInfeasible(self, link: Link, msg: P.LeaseInfeasible) -> None:
        """An agent cannot place an actor anywhere: tell the driver of its job."""
        self.warn_driver(msg.actor_id, msg.message)

    def forget_waiters(self, link: Link) -> None:
        """A caller left: nobody is waiting for its WaitActor and KillActor replies."""
        self.event(L.CallerLeft(link))

    def warn_driver(self, actor_id: str, message: str) -> None:
        """Warn the driver of the actor's job (when it is still there)."""
        record = self.head.actors.actors.get(actor_id)
        if record is not None:
            self.head.warn_job(record.job_id, message)

    # --- instructions --------------------------------------------------------------------
    def _send_to_node(self, node_id: str, msg) -> None:
        link = self.head.node_link(node_id)
        if link is not None:  # else its node is dying, and the lifecycle hears of it soon
            link.send(msg)

    def _reply(self, ins: L.Reply) -> None:
        for link, req_id in ins.waiters:
            if not link.closed:
                link.send(P.ActorInfo(req_id, ins.info))

    def _answer_registration(self, ins: L.RegistrationAnswered) -> None:
        link, req_id = ins.waiter
        link.send(P.ActorRegistered(req_id, ins.actor_id, ins.error))

    def _give_up_later(self, ins: L.GiveUpLater) -> None:
        asyncio.get_running_loop().call_later(UNKNOWN_ACTOR_GRACE, self.event,
                                              L.GraceOver(ins.actor_id))

    def _spec_for_worker(self, actor_id: str, spec: dict) -> dict:
        """What an actor's worker gets: its creator's spec, and what the head knows of the
        actor, for ``get_runtime_context()`` (its name, its job's namespace, how often it
        restarted before this start, and its handle's metadata for ``current_actor``)."""
        record = self.head.actors.actors[actor_id]
        return dict(spec, name=record.name,
                    job_namespace=self.head.jobs.namespace(record.job_id),
                    restarts=record.restarts, meta=record.meta)
