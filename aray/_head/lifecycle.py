"""The life of actors, as the head decides it: a pure state machine over the actor table.

Events come in (an actor was registered, created, started; it died; someone asked to kill it
or waits for it; a node joined or died; a job finished); instructions come out (place the
actor on a node, tell a node to kill or withdraw it, answer these callers with this info).
The machine changes the :class:`~aray._head.state.ActorTable` itself (a dead actor is marked
dead there, which frees its name) and reads the :class:`~aray._head.state.NodeTable`,
which the head keeps up to date *before* it hands over a node's joining or death. No
sockets, no clock, no awaits: the head turns messages into events and carries out what
comes back.

A caller waiting for an answer is a :data:`Waiter`, ``(caller, req_id)``: the machine
never looks inside ``caller`` (the head's link to it); it only hands it back in a
:class:`Reply`.

Example:
    >>> from aray._head.state import ActorTable, NodeTable
    >>> nodes = NodeTable(); _ = nodes.join("n1", "ws://n1", "127.0.0.1", {"CPU": 1.0})
    >>> actors = ActorLifecycle(ActorTable(), nodes)
    >>> actors.handle(Registered("a1", "", "ns", "j1", {}, False, ("driver", 1)))
    [RegistrationAnswered(waiter=('driver', 1), actor_id='a1', error='')]
    >>> actors.handle(Created("a1", {"placement": {"CPU": 1.0}}))
    [Place(node_id='n1', actor_id='a1', spec={'placement': {'CPU': 1.0}})]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..node import labels
from . import placement
from .group_table import PlacementGroupTable
from .state import ActorRecord, ActorState, ActorTable, NodeTable

log = logging.getLogger("aray.head")

#: a caller waiting for an answer: (the caller, its request id)
Waiter = tuple[Any, int]

# --- events ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registered:
    """A caller registered an actor (``get_if_exists``: or wants the live one of that name)."""

    actor_id: str
    name: str
    namespace: str
    job_id: str
    meta: dict
    get_if_exists: bool
    waiter: Waiter


@dataclass(frozen=True)
class Created:
    """The actor's creator sent what its node needs to start it (its ``spec``)."""

    actor_id: str
    spec: dict


@dataclass(frozen=True)
class Started:
    """The actor's constructor returned on ``node_id``'s worker ``worker_id``."""

    actor_id: str
    node_id: str
    address: str
    worker_id: str
    pid: int


@dataclass(frozen=True)
class StartFailed:
    """The actor's constructor raised (``error``: the pickled exception)."""

    actor_id: str
    node_id: str
    error: bytes


@dataclass(frozen=True)
class Died:
    """The actor's process is gone, for ``reason``."""

    actor_id: str
    reason: str


@dataclass(frozen=True)
class KillRequested:
    """``aray.kill()``: the caller is answered once the actor is down (dead or restarting)."""

    actor_id: str
    no_restart: bool
    waiter: Waiter
    cause: str = "it was killed with aray.kill()"  # what the actor's record says


@dataclass(frozen=True)
class WaitRequested:
    """A caller waits until the actor is usable (alive) or gone (dead)."""

    actor_id: str
    waiter: Waiter


@dataclass(frozen=True)
class GraceOver:
    """The time an unknown actor's waiters wait for its registration is over."""

    actor_id: str


@dataclass(frozen=True)
class CallerLeft:
    """A caller is gone: nobody waits for its answers any more."""

    caller: Any


@dataclass(frozen=True)
class NodeJoined:
    """A node joined (it is in the node table already)."""

    node_id: str


@dataclass(frozen=True)
class NodeDied:
    """A node died (it is marked dead in the node table already)."""

    node_id: str


@dataclass(frozen=True)
class JobFinished:
    """A job's driver exited: its actors that are not detached end with it."""

    job_id: str


@dataclass(frozen=True)
class PlacementGroupPlaced:
    """Every bundle of a placement group is reserved: its waiting actors can be placed."""

    pg_id: str


@dataclass(frozen=True)
class PlacementGroupRemoved:
    """A placement group was removed: the actors in it die (``why`` says how)."""

    pg_id: str
    why: str


# --- instructions ------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """Send the actor's ``spec`` to ``node_id``'s agent, which starts it (or queues it)."""

    node_id: str
    actor_id: str
    spec: dict


@dataclass(frozen=True)
class Withdraw:
    """Tell ``node_id``'s agent to forget the actor it holds queued."""

    node_id: str
    actor_id: str


@dataclass(frozen=True)
class KillOnNode:
    """Tell ``node_id``'s agent to end the actor's process."""

    node_id: str
    actor_id: str
    no_restart: bool


@dataclass(frozen=True)
class Reply:
    """Answer each of ``waiters`` with the actor's ``info`` (``{}``: no such actor)."""

    waiters: list
    info: dict


@dataclass(frozen=True)
class RegistrationAnswered:
    """Answer a registration: the actor's id, or an ``error`` saying why not."""

    waiter: Waiter
    actor_id: str
    error: str


@dataclass(frozen=True)
class WarnDriver:
    """Tell the driver of the actor's job why it waits (no node's labels match it)."""

    actor_id: str
    message: str


@dataclass(frozen=True)
class GiveUpLater:
    """Hand back :class:`GraceOver` for this actor after a while."""

    actor_id: str


_USABLE_OR_GONE = (ActorState.ALIVE, ActorState.DEAD)  # what a WaitRequested waits for
_DOWN = (ActorState.DEAD, ActorState.RESTARTING)  # what a KillRequested waits for
_WAITING = (ActorState.PENDING, ActorState.RESTARTING)  # not on any worker yet


class ActorLifecycle:
    """Decides what happens to actors: ``handle(event)`` returns the instructions.

    Args:
        actors: the table it changes.
        nodes: the table of nodes it reads (to place actors and to know which are alive).
        groups: the placement groups it reads (where an actor's bundle is).
    """

    def __init__(self, actors: ActorTable, nodes: NodeTable,
                 groups: PlacementGroupTable | None = None) -> None:
        self.actors = actors
        self.nodes = nodes
        self.groups = groups if groups is not None else PlacementGroupTable()
        self._waiters: dict[str, list[Waiter]] = {}  # actor id -> WaitRequested callers
        self._kill_waiters: dict[str, list[Waiter]] = {}  # actor id -> KillRequested callers
        self._spread_turn = 0  # SPREAD's rotation over the nodes
        self._handlers: dict[type, Callable[[Any, list], None]] = {
            Registered: self._registered, Created: self._created, Started: self._started,
            StartFailed: self._start_failed, Died: self._died,
            KillRequested: self._kill_requested, WaitRequested: self._wait_requested,
            GraceOver: self._grace_over, CallerLeft: self._caller_left,
            NodeJoined: self._node_joined, NodeDied: self._node_died,
            JobFinished: self._job_finished,
            PlacementGroupPlaced: self._group_placed,
            PlacementGroupRemoved: self._group_removed,
        }

    def handle(self, event) -> list:
        """The instructions that carry out what ``event`` means, in order."""
        out: list = []
        self._handlers[type(event)](event, out)
        return out

    def waiting(self) -> int:
        """How many callers wait for an answer (for tests and leak checks)."""
        return sum(map(len, self._waiters.values())) + sum(map(len, self._kill_waiters.values()))

    def _live(self, actor_id: str) -> ActorRecord | None:
        record = self.actors.actors.get(actor_id)
        return record if record is not None and record.state != ActorState.DEAD else None

    # --- the actor's own events ----------------------------------------------------------
    def _registered(self, ev: Registered, out: list) -> None:
        actor_id, error = self.actors.register(ev.actor_id, ev.name, ev.namespace, ev.job_id,
                                               ev.meta, ev.get_if_exists)
        out.append(RegistrationAnswered(ev.waiter, actor_id, error))

    def _created(self, ev: Created, out: list) -> None:
        record = self.actors.actors.get(ev.actor_id)
        if record is None or record.spec is not None:
            return  # unknown, or an alias that get_if_exists resolved to an existing actor
        record.spec = ev.spec
        self._place(record, out)

    def _started(self, ev: Started, out: list) -> None:
        record = self._live(ev.actor_id)
        if record is None:
            return
        record.state = ActorState.ALIVE
        record.address, record.worker_id = ev.address, ev.worker_id
        record.pid, record.node_id = ev.pid, ev.node_id
        self._wake(record, out)

    def _start_failed(self, ev: StartFailed, out: list) -> None:
        record = self._live(ev.actor_id)
        if record is None:
            return
        self.actors.mark_dead(record, "its constructor raised an exception", ev.error)
        # the worker has nothing left to do
        out.append(KillOnNode(ev.node_id, record.actor_id, True))
        self._wake(record, out)

    def _died(self, ev: Died, out: list) -> None:
        record = self._live(ev.actor_id)
        if record is None:
            return
        if record.can_restart() and record.spec is not None:
            record.restarts += 1
            record.state = ActorState.RESTARTING
            record.address = ""
            log.info("restarting actor %s (%s)", record.actor_id, ev.reason)
            self._wake(record, out)  # those waiting for a kill to take effect
            self._place(record, out)
        else:
            # a kill says why; otherwise the agent's reason (the process died, its node died)
            cause = record.death_cause if record.no_restart and record.death_cause else ev.reason
            self._mark_dead(record, cause, out)

    # --- what callers ask ----------------------------------------------------------------
    def _kill_requested(self, ev: KillRequested, out: list) -> None:
        record = self._live(ev.actor_id)
        if record is None:
            known = self.actors.actors.get(ev.actor_id)
            out.append(Reply([ev.waiter], known.describe() if known else {}))
            return
        self._kill_waiters.setdefault(ev.actor_id, []).append(ev.waiter)
        self._kill(record, ev.cause, ev.no_restart, out)

    def _wait_requested(self, ev: WaitRequested, out: list) -> None:
        record = self.actors.actors.get(ev.actor_id)
        if record is not None and record.state in _USABLE_OR_GONE:
            out.append(Reply([ev.waiter], record.describe()))
            return
        self._waiters.setdefault(ev.actor_id, []).append(ev.waiter)
        if record is None:  # its creator's registration may still be on the way
            out.append(GiveUpLater(ev.actor_id))

    def _grace_over(self, ev: GraceOver, out: list) -> None:
        if ev.actor_id not in self.actors.actors:
            waiters = self._waiters.pop(ev.actor_id, [])
            if waiters:
                out.append(Reply(waiters, {}))

    def _caller_left(self, ev: CallerLeft, out: list) -> None:
        for table in (self._waiters, self._kill_waiters):
            for actor_id in [a for a, ws in table.items() if any(w[0] is ev.caller for w in ws)]:
                kept = [w for w in table[actor_id] if w[0] is not ev.caller]
                if kept:
                    table[actor_id] = kept
                else:
                    del table[actor_id]

    # --- the cluster's events ------------------------------------------------------------
    def _node_joined(self, ev: NodeJoined, out: list) -> None:
        joined = self.nodes.nodes[ev.node_id]
        # actors waiting on a node that can never hold them move to the new one if it can
        for record in list(self.actors.actors.values()):
            if record.state not in _WAITING or record.spec is None:
                continue
            current = self.nodes.nodes.get(record.node_id)
            kind = (record.spec.get("scheduling_strategy") or {}).get("kind")
            if kind == "labels":
                if not record.node_id:  # no node matched it: the new one may
                    self._place(record, out, warn=False)
                continue
            if kind in ("node", "pg"):
                continue  # it waits for its own node, or its bundle
            if placement.should_move(record.spec["placement"],
                                     current if current is not None and current.alive else None,
                                     joined):
                out.append(Withdraw(record.node_id, record.actor_id))
                self._place(record, out)

    def _node_died(self, ev: NodeDied, out: list) -> None:
        reason = f"its node {ev.node_id[:12]} died"
        for record in placement.on_node(list(self.actors.actors.values()), ev.node_id):
            self._died(Died(record.actor_id, reason), out)

    def _job_finished(self, ev: JobFinished, out: list) -> None:
        for record in list(self.actors.actors.values()):
            if record.job_id == ev.job_id and not record.detached and \
                    record.state != ActorState.DEAD:
                self._kill(record, f"its driver (job {ev.job_id}) exited", True, out)

    def _group_placed(self, ev: PlacementGroupPlaced, out: list) -> None:
        for record in self._in_group(ev.pg_id):
            node = self.nodes.nodes.get(record.node_id)
            if record.state in _WAITING and (node is None or not node.alive):
                self._place(record, out)

    def _group_removed(self, ev: PlacementGroupRemoved, out: list) -> None:
        for record in self._in_group(ev.pg_id):
            if record.state != ActorState.DEAD:  # (its node kills its worker too)
                record.no_restart = True
                self._mark_dead(record, f"its placement group {ev.pg_id} was removed: {ev.why}",
                                out)

    def _in_group(self, pg_id: str) -> list[ActorRecord]:
        return [r for r in self.actors.actors.values() if r.spec is not None and (
            r.spec.get("scheduling_strategy") or {}).get("pg_id") == pg_id]

    # --- decisions shared by the events --------------------------------------------------
    def _place(self, record: ActorRecord, out: list, warn: bool = True) -> None:
        assert record.spec is not None  # only actors whose creator sent their spec are placed
        strategy = record.spec.get("scheduling_strategy") or {}
        if strategy.get("kind") == "pg":
            self._place_in_group(record, strategy, out)
            return
        node_id, why = placement.place(self.nodes.iter_alive(), record.spec["placement"],
                                       strategy, self._spread_turn)
        if strategy.get("kind") == "spread":
            self._spread_turn += 1
        if node_id == "":  # no node's labels match: it waits for one that joins
            record.node_id = ""
            if warn:
                out.append(WarnDriver(record.actor_id, labels.unmatched_message(
                    "actor", record.spec.get("description", record.actor_id),
                    record.spec["placement"], strategy,
                    [(n.node_id, n.labels) for n in self.nodes.iter_alive()])))
            return
        if node_id is None:
            self._mark_dead(record, why or "no node is alive to run it", out)
            return
        record.node_id = node_id
        self.nodes.reserve(node_id, record.spec["placement"])
        out.append(Place(node_id, record.actor_id, record.spec))

    def _place_in_group(self, record: ActorRecord, strategy: dict, out: list) -> None:
        """On the node of its bundle, once the group is placed (until then it waits)."""
        assert record.spec is not None
        bundles = self.groups.bundle_nodes(strategy["pg_id"])
        if bundles is None:
            self._mark_dead(record, f"its placement group {strategy['pg_id']} was removed", out)
            return
        node_id = placement.bundle_node(bundles, int(strategy.get("index", -1)),
                                        record.spec["placement"], self._spread_turn)
        self._spread_turn += 1
        record.node_id = node_id or ""
        if node_id:
            out.append(Place(node_id, record.actor_id, record.spec))

    def _kill(self, record: ActorRecord, cause: str, no_restart: bool, out: list) -> None:
        record.no_restart = record.no_restart or no_restart
        node = self.nodes.nodes.get(record.node_id)
        if node is not None and node.alive and record.spec is not None:
            out.append(KillOnNode(record.node_id, record.actor_id, record.no_restart))
            record.death_cause = cause  # kept if the death that follows is final
        else:
            self._mark_dead(record, cause, out)

    def _mark_dead(self, record: ActorRecord, cause: str, out: list) -> None:
        self.actors.mark_dead(record, cause)
        self._wake(record, out)

    def _wake(self, record: ActorRecord, out: list) -> None:
        waiters = []
        if record.state in _USABLE_OR_GONE:
            waiters += self._waiters.pop(record.actor_id, [])
        if record.state in _DOWN:
            waiters += self._kill_waiters.pop(record.actor_id, [])
        if waiters:
            out.append(Reply(waiters, record.describe()))
