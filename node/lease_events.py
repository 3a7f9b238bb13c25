"""What the lease scheduler hears (events) and what it asks the agent to do (instructions).

Plain named tuples. A ``caller`` is whatever the agent uses to name the process that asked
(its link); the scheduler only compares callers, never talks to them. Events are past
tense, instructions imperative, as in :mod:`aray._protocol`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

# --- events ------------------------------------------------------------------------------


class NodeStarted(NamedTuple):
    """The agent is up: start ``prestart`` workers ahead of any request."""

    prestart: int


class LeaseRequested(NamedTuple):
    """A caller wants a worker for tasks of ``shape`` of job ``job_id``."""

    caller: Hashable
    req_id: int
    shape: dict
    description: str  # what the lease is for, used in warnings
    job_id: str
    may_spillback: bool  # False when another node's spillback sent it here
    #: scheduling_strategy: {"kind": "spread"}, {"kind": "node", ...} or
    #: {"kind": "pg", "pg_id", "index", ...} (a placement group's bundle on this node)
    strategy: dict = {}


class ActorPlacementRequested(NamedTuple):
    """The head places an actor here: it needs ``placement`` to start, ``hold`` for life."""

    caller: Hashable
    actor_id: str
    placement: dict
    hold: dict
    description: str
    job_id: str
    spec: Any  # the actor's spec, handed back in StartActor as it is
    bundle: tuple | None = None  # (placement group id, bundle index or -1 for any)


class BundlesRequested(NamedTuple):
    """The head asks this node to reserve bundles of placement group ``pg_id`` now, all of
    them or none: ``bundles`` as ``[[index, shape], ...]``."""

    caller: Hashable
    req_id: int
    pg_id: str
    bundles: list


class BundlesReleased(NamedTuple):
    """The bundles ``indexes`` of placement group ``pg_id`` end here (the group was removed,
    or its reservation elsewhere failed): what runs in them is killed."""

    pg_id: str
    indexes: list


class WorkerStarted(NamedTuple):
    """A worker process is up and linked to the agent."""

    worker_id: str


class JobAssigned(NamedTuple):
    """A fresh worker answered AssignJob (``ok``), or could not (its link failed)."""

    worker_id: str
    ok: bool
    error: str = ""  # its runtime env failed: the request it was reserved for fails


class WorkerExited(NamedTuple):
    """A worker process is gone (or never started); ``reason`` is said of its actor."""

    worker_id: str
    reason: str


class LeaseReturned(NamedTuple):
    """The caller holding a worker's lease gives it back."""

    caller: Hashable
    worker_id: str


class WorkerBlocked(NamedTuple):
    """A leased worker waits in ``get``: its CPUs may serve others meanwhile."""

    worker_id: str


class WorkerUnblocked(NamedTuple):
    """The blocked worker resumed."""

    worker_id: str


class WorkerKillRequested(NamedTuple):
    """A caller asks to end a worker it holds (cancelling a task, say)."""

    caller: Hashable
    worker_id: str


class CallerGone(NamedTuple):
    """A caller's link closed: its requests and leases end, its leased workers die."""

    caller: Hashable


class JobFinished(NamedTuple):
    """A job's driver left: the workers of that job go (actors are the head's to end)."""

    job_id: str


class ViewChanged(NamedTuple):
    """The head's view of the cluster: ``nodes`` as ``[node_id, address, total, free]``."""

    nodes: list
    node_id: str  # this node, to tell itself from the others


class ActorWithdrawn(NamedTuple):
    """The head placed a queued actor elsewhere."""

    actor_id: str


class ActorKilled(NamedTuple):
    """The head kills an actor, which may be queued, starting or running here."""

    actor_id: str


# --- instructions ------------------------------------------------------------------------


class GrantLease(NamedTuple):
    """Tell the caller its request ``req_id`` got worker ``worker_id`` (with GPUs)."""

    caller: Hashable
    req_id: int
    worker_id: str
    gpu_ids: list


class SpillBack(NamedTuple):
    """Tell the caller to ask the agent at ``address`` instead."""

    caller: Hashable
    req_id: int
    address: str


class SpawnWorker(NamedTuple):
    """Start a fresh worker process named ``worker_id``."""

    worker_id: str


class AssignJob(NamedTuple):
    """Make a fresh worker join ``job_id``; answer with :class:`JobAssigned`."""

    worker_id: str
    job_id: str


class StartActor(NamedTuple):
    """Construct the actor on the worker, which is its for life."""

    worker_id: str
    actor_id: str
    gpu_ids: list
    spec: Any


class KillWorker(NamedTuple):
    """End a worker process."""

    worker_id: str


class ReportResources(NamedTuple):
    """Tell the head what is free on this node now."""

    available: dict


class WarnInfeasible(NamedTuple):
    """Tell the caller (once) that no node of the cluster can run its request."""

    caller: Hashable
    req_id: int
    message: str
    actor_id: str  # "" for a task's lease


class FailRequest(NamedTuple):
    """Tell the caller its request cannot be served (an actor's: report it dead)."""

    caller: Hashable
    req_id: int
    actor_id: str
    message: str
    #: why: "env" (its runtime env failed), "unschedulable" (its strategy cannot be met),
    #: "bundle" (its placement group's bundle is not, or no longer, on this node)
    kind: str = "env"


class AnswerBundles(NamedTuple):
    """Tell the head whether the bundles it asked for are reserved here."""

    caller: Hashable
    req_id: int
    ok: bool


class ReportActorDied(NamedTuple):
    """Tell the head that an actor placed here is dead, and why."""

    actor_id: str
    reason: str
