"""The node's lease decisions as a state machine: events in, instructions out.

:class:`LeaseScheduler` decides which worker gets a lease, when a worker must start or join
a job first, where a request is sent back to (spillback), when a request is infeasible,
whose CPUs are lent while a worker blocks, what an actor holds for life, and which workers
end with their caller or job. It does no I/O, keeps no clock and never awaits: the node
agent turns messages into events (:mod:`.lease_events`), calls :meth:`LeaseScheduler.handle`
and carries out the instructions it returns. Resource arithmetic is :mod:`.scheduler`'s.

Examples:
    >>> from aray.node.lease_events import LeaseRequested, NodeStarted, WorkerStarted
    >>> s = LeaseScheduler({"CPU": 1}, new_id=iter(["w1", "w2"]).__next__)
    >>> s.handle(NodeStarted(1))
    [SpawnWorker(worker_id='w1')]
    >>> s.handle(WorkerStarted("w1"))
    []
    >>> s.handle(LeaseRequested("driver", 7, {"CPU": 1}, "f()", "", True))  # doctest: +ELLIPSIS
    [GrantLease(caller='driver', req_id=7, worker_id='w1', gpu_ids=[]), ReportResources(...)]
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable, Hashable
from typing import Any

from . import lease_events as E
from .bundles import Pools
from .routing import Router
from .scheduler import ClusterView, LeaseQueue, ReleaseError, ResourcePool, fits, format_resources

#: actors killed before their worker started, remembered until it does (the most recent)
MAX_KILLED_ACTORS = 10_000


class WorkerState(enum.Enum):
    """A worker's life: STARTING -> IDLE <-> LEASED, with JOINING while a fresh worker joins
    the job of the request it is reserved for; DEAD once it is ending or gone."""

    STARTING = 0
    IDLE = 1
    LEASED = 2
    DEAD = 3
    JOINING = 4


class RequestState(enum.Enum):
    """QUEUED until resources allow; RESERVED while its resources are taken and a worker
    starts or joins its job for it; GRANTED once the caller has its worker."""

    QUEUED = 0
    RESERVED = 1
    GRANTED = 2


class LeaseState(enum.Enum):
    """HELD: the lease's resources are taken; LENT: its worker blocks in get, and its CPUs
    serve other leases until it resumes."""

    HELD = 0
    LENT = 1


@dataclasses.dataclass(eq=False)
class Request:
    """A caller's request for a worker (an actor's placement when ``actor_id`` is set)."""

    caller: Hashable
    req_id: int
    shape: dict
    description: str
    job_id: str
    actor_id: str = ""
    hold: dict = dataclasses.field(default_factory=dict)
    spec: Any = None
    state: RequestState = RequestState.QUEUED
    gpu_ids: list = dataclasses.field(default_factory=list)
    warned: bool = False  # the caller was told it is infeasible
    #: (placement group id, bundle index, -1 for any of the group's bundles here), or None
    bundle: tuple | None = None
    #: the pool its resources were taken from once reserved or granted (None: the node's)
    pool_key: tuple | None = None


@dataclasses.dataclass
class Lease:
    """What a worker's holder took: ``shape`` and the GPU devices it got."""

    caller: Hashable
    shape: dict
    gpu_ids: list
    state: LeaseState = LeaseState.HELD
    pool_key: tuple | None = None  # the bundle it took them from (None: the node's pool)


@dataclasses.dataclass
class WorkerSlot:
    """The scheduler's view of one worker process."""

    worker_id: str
    state: WorkerState = WorkerState.STARTING
    job_id: str = ""  # the job it serves ("" until its first lease): workers are per job
    actor_id: str = ""  # set for the life of the worker once it hosts an actor
    lease: Lease | None = None
    reserved: Request | None = None  # the request it starts or joins a job for
    #: the GPU devices of its last lease (None: it has had none). A process that used a
    #: GPU keeps that device's context, whatever CUDA_VISIBLE_DEVICES says next, so a
    #: worker is leased again only with the same devices (or none again)
    gpu_ids: tuple | None = None

    @property
    def holder(self) -> Hashable | None:
        """The caller its lease (or reservation) is for."""
        if self.lease is not None:
            return self.lease.caller
        return self.reserved.caller if self.reserved is not None else None


class LeaseScheduler:
    """Leases of one node's workers, decided over plain data.

    Args:
        resources: the node's totals.
        prestart: fresh workers to keep ready when ``shared`` (see JobFinished).
        shared: the node serves many jobs: a finished job's workers are replaced at once.
        new_id: names new workers (a uuid by default; tests pass their own).
        labels: the node's labels, for requests with a label strategy.
    """

    def __init__(self, resources: dict, *, prestart: int = 0, shared: bool = False,
                 new_id: Callable[[], str] | None = None, labels: dict | None = None) -> None:
        self.pool = ResourcePool(resources)
        self.queue = LeaseQueue()
        self.workers: dict[str, WorkerSlot] = {}
        self.view = ClusterView(self.pool.total)
        #: the node's pool and its placement groups' bundles
        self.pools = Pools(self.pool)
        #: where requests go under their strategies (and label requests no node matches)
        self.router = Router(self.pool, self.view, labels or {})
        self.prestart = prestart
        self.shared = shared
        self._new_id = new_id or (lambda: uuid.uuid4().hex[:16])
        self._killed_actors: dict[str, None] = {}  # killed before their worker started
        self._handlers: dict[type, Callable[[Any], list]] = {
            E.NodeStarted: lambda ev: [self._new_worker() for _ in range(ev.prestart)],
            E.LeaseRequested: self._lease_requested,
            E.ActorPlacementRequested: self._actor_placement_requested,
            E.WorkerStarted: self._worker_started,
            E.JobAssigned: self._job_assigned,
            E.WorkerExited: self._worker_exited,
            E.LeaseReturned: self._lease_returned,
            E.WorkerBlocked: self._worker_blocked,
            E.WorkerUnblocked: self._worker_unblocked,
            E.WorkerKillRequested: self._worker_kill_requested,
            E.CallerGone: self._caller_gone,
            E.JobFinished: self._job_finished,
            E.ViewChanged: self._view_changed,
            E.ActorWithdrawn: self._actor_withdrawn,
            E.ActorKilled: self._actor_killed,
            E.BundlesRequested: self._bundles_requested,
            E.BundlesReleased: self._bundles_released,
        }

    def handle(self, event: Any) -> list:
        """Take in one event; returns the instructions to carry out, in order."""
        return self._handlers[type(event)](event)

    def pending(self) -> list[list]:
        """The queued requests by shape: ``[shape, count, infeasible]`` (for status)."""
        pending: dict[str, list] = {}
        for req in self.queue:
            entry = pending.setdefault(format_resources(req.shape), [req.shape, 0, False])
            entry[1] += 1
            entry[2] = entry[2] or not self.view.feasible(req.shape)
        for req, _, _ in self.router.unmatched:
            entry = pending.setdefault(format_resources(req.shape), [req.shape, 0, True])
            entry[1], entry[2] = entry[1] + 1, True
        return list(pending.values())

    # --- requests ------------------------------------------------------------------------
    def _lease_requested(self, ev: E.LeaseRequested) -> list:
        if ev.strategy.get("kind") == "pg":  # the caller found the bundle's node: this one
            bundle = (ev.strategy["pg_id"], int(ev.strategy.get("index", -1)))
            if not self.pools.for_request(bundle):
                return [E.FailRequest(ev.caller, ev.req_id, "", (
                    f"{ev.description}: bundle {bundle[1]} of placement group {bundle[0]} is "
                    "not on this node"), kind="bundle")]
            return self._enqueue(Request(ev.caller, ev.req_id, dict(ev.shape),
                                         ev.description, ev.job_id, bundle=bundle))
        route = self.router.route(ev.shape, ev.description, ev.strategy, ev.may_spillback)
        if route.verdict == "spill":
            return [E.SpillBack(ev.caller, ev.req_id, route.detail)]
        if route.verdict == "fail":
            return [E.FailRequest(ev.caller, ev.req_id, "", route.detail, kind="unschedulable")]
        req = Request(ev.caller, ev.req_id, dict(ev.shape), ev.description, ev.job_id)
        if route.verdict == "wait":  # no node's labels match: until one that does joins
            req.warned = True
            self.router.wait(req, req.shape, ev.strategy)
            return [E.WarnInfeasible(ev.caller, ev.req_id, route.detail, "")]
        return self._enqueue(req)

    def _actor_placement_requested(self, ev: E.ActorPlacementRequested) -> list:
        if ev.bundle is not None and not self.pools.for_request(ev.bundle):
            return [E.ReportActorDied(ev.actor_id, (
                f"bundle {ev.bundle[1]} of its placement group {ev.bundle[0]} is not on the "
                "node it was sent to"))]
        return self._enqueue(Request(ev.caller, 0, dict(ev.placement), ev.description,
                                     ev.job_id, ev.actor_id, dict(ev.hold), ev.spec,
                                     bundle=ev.bundle))

    def _enqueue(self, req: Request) -> list:
        self.queue.push(req)
        out = self._schedule()
        if req.state is RequestState.QUEUED:
            out += self._warn_if_infeasible(req)
        return out

    def _warn_if_infeasible(self, req: Request) -> list:
        if req.warned or req.bundle is not None or self.view.feasible(req.shape):
            return []
        req.warned = True
        what = "actor" if req.actor_id else "task"
        return [E.WarnInfeasible(req.caller, req.req_id, self.view.infeasible_message(
            what, req.description, req.shape), req.actor_id)]

    def _view_changed(self, ev: E.ViewChanged) -> list:
        self.view.update(ev.nodes, ev.node_id)
        out: list = []
        for req, target in self.router.rematch():  # a node that matches their labels
            out += [E.SpillBack(req.caller, req.req_id, target)] if target else self._enqueue(req)
        # what can never run here but can on a node that joined: send it there
        for req in list(self.queue):
            if req.actor_id or req.bundle is not None or fits(req.shape, self.pool.total):
                continue
            target = self.view.spillback(req.shape, self.pool)
            if target:
                self.queue.remove_if(lambda r, req=req: r is req)
                out.append(E.SpillBack(req.caller, req.req_id, target))
        for req in self.queue:
            out += self._warn_if_infeasible(req)
        return out

    # --- granting ------------------------------------------------------------------------
    def _schedule(self) -> list:
        """Grant every queued request that fits, to an idle worker or a reserved one."""
        out: list = []
        idle = [w for w in self.workers.values() if w.state is WorkerState.IDLE]
        starting = [w for w in self.workers.values()
                    if w.state is WorkerState.STARTING and w.reserved is None]
        for req, pool, gpu_ids in self.queue.take_grantable(self._pools_of, lambda r: r.shape):
            req.gpu_ids, req.pool_key = gpu_ids, self.pools.key_of(pool)
            worker = _pick(idle, req.job_id, gpu_ids)
            if worker is not None and worker.job_id == req.job_id:
                out += self._grant(worker, req)  # the common case: at once
                continue
            req.state = RequestState.RESERVED
            if worker is not None:  # an idle fresh worker: it must join the job first
                worker.reserved = req
                out.append(self._join(worker, req))
                continue
            worker = _pick(starting, req.job_id, gpu_ids)
            if worker is None:
                out.append(self._new_worker())
                worker = self.workers[out[-1].worker_id]
            worker.reserved = req
        return out

    def _join(self, worker: WorkerSlot, req: Request) -> E.AssignJob:
        worker.state, worker.job_id = WorkerState.JOINING, req.job_id
        return E.AssignJob(worker.worker_id, req.job_id)

    def _new_worker(self) -> E.SpawnWorker:
        worker = WorkerSlot(self._new_id())
        self.workers[worker.worker_id] = worker
        return E.SpawnWorker(worker.worker_id)

    def _grant(self, worker: WorkerSlot, req: Request) -> list:
        worker.job_id = worker.job_id or req.job_id
        worker.reserved = None
        req.state = RequestState.GRANTED
        if req.actor_id and req.actor_id in self._killed_actors:
            del self._killed_actors[req.actor_id]  # killed while its worker was starting
            self.pools.give_back(req.pool_key, req.shape, req.gpu_ids)
            worker.state = WorkerState.IDLE
            return [E.ReportActorDied(req.actor_id, "it was killed before it started"),
                    self._report(), *self._schedule()]
        worker.state = WorkerState.LEASED
        worker.lease = Lease(req.caller, dict(req.shape), req.gpu_ids, pool_key=req.pool_key)
        worker.gpu_ids = tuple(req.gpu_ids)
        if not req.actor_id:
            return [E.GrantLease(req.caller, req.req_id, worker.worker_id, req.gpu_ids),
                    self._report()]
        # the worker is the actor's for life; it keeps only what the actor holds
        # (by default an actor needs a CPU to be placed but holds none while it lives)
        pool = self.pools.pool(req.pool_key)
        assert pool is not None  # (a bundle's end takes its queued requests out)
        pool.release({k: v for k, v in req.shape.items() if k != "GPU"}, [])
        pool.acquire({k: v for k, v in req.hold.items() if k != "GPU"})
        worker.lease.shape = dict(req.hold)
        worker.actor_id = req.actor_id
        # what the placement needed beyond the hold is free again: place the next one
        return [E.StartActor(worker.worker_id, req.actor_id, req.gpu_ids, req.spec),
                self._report(), *self._schedule()]

    def _report(self) -> E.ReportResources:
        return E.ReportResources(dict(self.pool.available))

    def _release(self, worker: WorkerSlot) -> list:
        """Give back a worker's lease (which it must hold: twice raises ReleaseError)."""
        lease = worker.lease
        if lease is None:
            raise ReleaseError(f"worker {worker.worker_id} holds no lease: released twice?")
        shape = dict(lease.shape)
        if lease.state is LeaseState.LENT:  # its CPUs were lent out already
            shape.pop("CPU", None)
        self.pools.give_back(lease.pool_key, shape, lease.gpu_ids)
        worker.lease = None
        return [self._report()]

    def _unreserve(self, worker: WorkerSlot, requeue: bool) -> None:
        """The request a worker was reserved for gives its resources back (and waits for
        another worker when ``requeue``)."""
        req, worker.reserved = worker.reserved, None
        if req is None:
            return
        self.pools.give_back(req.pool_key, req.shape, req.gpu_ids)
        req.gpu_ids, req.state, req.pool_key = [], RequestState.QUEUED, None
        if requeue:
            self.queue.push(req)

    # --- workers -------------------------------------------------------------------------
    def _worker_started(self, ev: E.WorkerStarted) -> list:
        worker = self.workers.get(ev.worker_id)
        if worker is None or worker.state is not WorkerState.STARTING:
            return []
        req = worker.reserved
        if req is None:
            worker.state = WorkerState.IDLE
            return self._schedule()
        if not worker.job_id and req.job_id:
            return [self._join(worker, req)]
        return self._grant(worker, req)

    def _job_assigned(self, ev: E.JobAssigned) -> list:
        worker = self.workers.get(ev.worker_id)
        if worker is None or worker.state is not WorkerState.JOINING:
            return []
        if ev.ok:
            assert worker.reserved is not None
            return self._grant(worker, worker.reserved)
        worker.state = WorkerState.DEAD  # a worker that cannot join is of no use
        req = worker.reserved
        if not ev.error or req is None:
            self._unreserve(worker, requeue=True)  # its link failed: try another
            return [E.KillWorker(worker.worker_id), *self._schedule()]
        # its runtime env could not be set up: another worker would fail the same way
        self._unreserve(worker, requeue=False)
        return [E.KillWorker(worker.worker_id),
                E.FailRequest(req.caller, req.req_id, req.actor_id, ev.error),
                *self._schedule()]

    def _worker_exited(self, ev: E.WorkerExited) -> list:
        worker = self.workers.pop(ev.worker_id, None)
        if worker is None:
            return []
        out: list = []
        if worker.actor_id:
            out.append(E.ReportActorDied(worker.actor_id, ev.reason))
        if worker.lease is not None:
            out += self._release(worker)
        self._unreserve(worker, requeue=True)  # it died while starting: try another
        worker.state = WorkerState.DEAD
        return out + self._schedule()

    def _lease_returned(self, ev: E.LeaseReturned) -> list:
        worker = self.workers.get(ev.worker_id)
        if (worker is None or worker.state is not WorkerState.LEASED
                or worker.holder != ev.caller):
            return []  # a late message: that lease ended already
        out = self._release(worker)
        # it stays, even beyond the number of CPUs: it may own objects its job still uses;
        # the job's end takes it
        worker.state = WorkerState.IDLE
        return out + self._schedule()

    def _worker_blocked(self, ev: E.WorkerBlocked) -> list:
        worker = self.workers.get(ev.worker_id)
        if worker is None or worker.state is not WorkerState.LEASED or worker.lease is None \
                or worker.lease.state is LeaseState.LENT:
            return []
        worker.lease.state = LeaseState.LENT
        pool = self.pools.pool(worker.lease.pool_key)
        if pool is not None:
            pool.lend(worker.lease.shape.get("CPU", 0))
        return self._schedule()

    def _worker_unblocked(self, ev: E.WorkerUnblocked) -> list:
        worker = self.workers.get(ev.worker_id)
        if worker is not None and worker.lease is not None \
                and worker.lease.state is LeaseState.LENT:
            worker.lease.state = LeaseState.HELD
            # take its CPUs back, briefly oversubscribing if they were leased meanwhile
            pool = self.pools.pool(worker.lease.pool_key)
            if pool is not None:
                pool.reclaim(worker.lease.shape.get("CPU", 0))
        return []

    def _worker_kill_requested(self, ev: E.WorkerKillRequested) -> list:
        worker = self.workers.get(ev.worker_id)
        if worker is not None and worker.holder == ev.caller:
            return [E.KillWorker(worker.worker_id)]
        return []

    def _end(self, worker: WorkerSlot, requeue: bool) -> list:
        """End a worker now: its lease or reservation ends, and its process is killed."""
        out = self._release(worker) if worker.lease is not None else []
        self._unreserve(worker, requeue)
        worker.state = WorkerState.DEAD
        return [*out, E.KillWorker(worker.worker_id)]

    def _caller_gone(self, ev: E.CallerGone) -> list:
        self.queue.remove_if(lambda r: r.caller == ev.caller)
        self.router.forget(lambda r: r.caller == ev.caller)
        out: list = []
        for worker in list(self.workers.values()):
            if worker.holder != ev.caller:
                continue
            if worker.state is WorkerState.STARTING:
                self._unreserve(worker, requeue=False)  # it starts for someone else
            elif worker.state in (WorkerState.LEASED, WorkerState.JOINING):
                # it may still be running the caller's task; nobody wants the result
                out += self._end(worker, requeue=False)
        return out + self._schedule()

    def _job_finished(self, ev: E.JobFinished) -> list:
        if not ev.job_id:
            return []
        out: list = []
        for worker in list(self.workers.values()):
            if _of_job(worker.job_id, ev.job_id) and not worker.actor_id \
                    and worker.state is not WorkerState.DEAD:
                out += self._end(worker, requeue=True)
        if self.shared:  # the next job should not wait for workers to start
            fresh = sum(1 for w in self.workers.values()
                        if not w.job_id and w.state is not WorkerState.DEAD)
            out += [self._new_worker() for _ in range(max(0, self.prestart - fresh))]
        return out + self._schedule()

    # --- actors --------------------------------------------------------------------------
    def _unqueue_actor(self, actor_id: str) -> list:
        return self.queue.remove_if(lambda r: r.actor_id == actor_id)

    def _actor_withdrawn(self, ev: E.ActorWithdrawn) -> list:
        self._unqueue_actor(ev.actor_id)
        return []

    def _actor_killed(self, ev: E.ActorKilled) -> list:
        if self._unqueue_actor(ev.actor_id):
            return [E.ReportActorDied(ev.actor_id, "it was killed before it started")]
        for worker in self.workers.values():
            if worker.actor_id == ev.actor_id:
                return [E.KillWorker(worker.worker_id)]
        # its worker may still be starting (or it was never here): remember a bounded few
        self._killed_actors[ev.actor_id] = None
        while len(self._killed_actors) > MAX_KILLED_ACTORS:
            del self._killed_actors[next(iter(self._killed_actors))]
        return []


    # --- placement groups' bundles --------------------------------------------------------
    def _pools_of(self, req: Request) -> list[ResourcePool]:
        return self.pools.for_request(req.bundle)

    def _bundles_requested(self, ev: E.BundlesRequested) -> list:
        """All of the bundles now, or none: the head asks again when resources change."""
        if not self.pools.reserve(ev.pg_id, ev.bundles):
            return [E.AnswerBundles(ev.caller, ev.req_id, False)]
        return [E.AnswerBundles(ev.caller, ev.req_id, True), self._report(), *self._schedule()]

    def _bundles_released(self, ev: E.BundlesReleased) -> list:
        """The bundles end: what waits for them fails, what runs in them is killed."""
        ended = self.pools.here(ev.pg_id, ev.indexes)
        if not ended:
            return []
        why = f"its placement group {ev.pg_id} was removed (or its bundle moved)"

        def fail(req: Request) -> E.FailRequest:
            return E.FailRequest(req.caller, req.req_id, req.actor_id,
                                 f"{req.description}: {why}", kind="bundle")

        out: list = [fail(req) for req in self.queue.remove_if(
            lambda r: r.bundle is not None and r.bundle[0] == ev.pg_id and (
                r.bundle[1] < 0 or (ev.pg_id, r.bundle[1]) in ended))]
        for worker in list(self.workers.values()):
            held = worker.lease if worker.lease is not None else worker.reserved
            if held is not None and held.pool_key in ended \
                    and worker.state is not WorkerState.DEAD:
                req = worker.reserved
                out += self._end(worker, requeue=False)
                out += [fail(req)] if req is not None else []
        self.pools.end(ended)
        return [*out, self._report(), *self._schedule()]


def _pick(workers: list[WorkerSlot], job_id: str, gpu_ids: list) -> WorkerSlot | None:
    """Take a worker for ``job_id`` from ``workers``: one of that job, else a fresh one;
    either way one that last had the devices ``gpu_ids`` (or none, or never a lease)."""
    devices = tuple(gpu_ids)
    for wanted in (job_id, ""):
        for i, worker in enumerate(workers):
            if worker.job_id == wanted and worker.gpu_ids in (None, devices):
                return workers.pop(i)
    return None


def _of_job(pool: str, job_id: str) -> bool:
    """Is a worker of ``pool`` (a job id, or ``JOB:ENV`` for a job's runtime env) one of
    ``job_id``'s?"""
    return pool == job_id or pool.startswith(job_id + ":")
