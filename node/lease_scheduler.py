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

import uuid
from collections.abc import Callable
from typing import Any

from . import lease_events as E
from .admission import Admission
from .bundles import Pools
from .lease_records import (
    Lease,
    LeaseState,
    Request,
    RequestState,
    WorkerSlot,
    WorkerSlots,
    WorkerState,
)
from .routing import Router
from .scheduler import ClusterView, LeaseQueue, ReleaseError, ResourcePool

__all__ = ["MAX_KILLED_ACTORS", "LeaseScheduler", "WorkerState"]

#: actors killed before their worker started, remembered until it does (the most recent)
MAX_KILLED_ACTORS = 10_000


#: which method takes which event
_HANDLERS: dict[type, str] = {
    E.NodeStarted: "_node_started",
    E.LeaseRequested: "_lease_requested",
    E.ActorPlacementRequested: "_actor_placement_requested",
    E.WorkerStarted: "_worker_started",
    E.JobAssigned: "_job_assigned",
    E.WorkerExited: "_worker_exited",
    E.LeaseReturned: "_lease_returned",
    E.WorkerBlocked: "_worker_blocked",
    E.WorkerUnblocked: "_worker_unblocked",
    E.WorkerKillRequested: "_worker_kill_requested",
    E.CallerGone: "_caller_gone",
    E.JobFinished: "_job_finished",
    E.ViewChanged: "_view_changed",
    E.ActorWithdrawn: "_actor_withdrawn",
    E.ActorKilled: "_actor_killed",
    E.BundlesRequested: "_bundles_requested",
    E.BundlesReleased: "_bundles_released",
}


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
        self.workers = WorkerSlots(new_id or (lambda: uuid.uuid4().hex[:16]))
        self.view = ClusterView(self.pool.total)
        #: the node's pool and its placement groups' bundles
        self.pools = Pools(self.pool)
        #: where requests go under their strategies (and label requests no node matches)
        self.router = Router(self.pool, self.view, labels or {})
        #: which requests are taken here, sent on, failed or set aside
        self.admission = Admission(self.pool, self.view, self.pools, self.router)
        self.prestart = prestart
        self.shared = shared
        self._killed_actors: dict[str, None] = {}  # killed before their worker started
        self._handlers: dict[type, Callable[[Any], list]] = {
            kind: getattr(self, name) for kind, name in _HANDLERS.items()}

    def handle(self, event: Any) -> list:
        """Take in one event; returns the instructions to carry out, in order."""
        return self._handlers[type(event)](event)

    def pending(self) -> list[list]:
        """The queued requests by shape: ``[shape, count, infeasible]`` (for status)."""
        return self.admission.pending(self.queue)

    # --- requests ------------------------------------------------------------------------
    def _node_started(self, ev: E.NodeStarted) -> list:
        return [self._new_worker() for _ in range(ev.prestart)]

    def _lease_requested(self, ev: E.LeaseRequested) -> list:
        admitted = self.admission.lease(ev)
        return self._enqueue(admitted) if isinstance(admitted, Request) else admitted

    def _actor_placement_requested(self, ev: E.ActorPlacementRequested) -> list:
        admitted = self.admission.actor(ev)
        return self._enqueue(admitted) if isinstance(admitted, Request) else admitted

    def _enqueue(self, req: Request) -> list:
        self.queue.push(req)
        out = self._schedule()
        if req.state is RequestState.QUEUED:
            out += self.admission.warn_if_infeasible(req)
        return out

    def _view_changed(self, ev: E.ViewChanged) -> list:
        self.view.update(ev.nodes, ev.node_id)
        out: list = []
        for req, target in self.router.rematch():  # a node that matches their labels
            out += [E.SpillBack(req.caller, req.req_id, target)] if target else self._enqueue(req)
        moved, spills = self.admission.moved_on(self.queue)
        self.queue.remove_if(lambda r: r in moved)  # (requests compare by identity)
        out += spills
        for req in self.queue:
            out += self.admission.warn_if_infeasible(req)
        return out

    # --- granting ------------------------------------------------------------------------
    def _schedule(self) -> list:
        """Grant every queued request that fits, to an idle worker or a reserved one."""
        out: list = []
        idle, starting = self.workers.grantable()
        for req, pool, gpu_ids in self.queue.take_grantable(
                lambda r: self.pools.for_request(r.bundle), lambda r: r.shape):
            req.gpu_ids, req.pool_key = gpu_ids, self.pools.key_of(pool)
            worker = WorkerSlots.pick(idle, req.job_id, gpu_ids)
            if worker is not None and worker.job_id == req.job_id:
                out += self._grant(worker, req)  # the common case: at once
                continue
            req.state = RequestState.RESERVED
            if worker is not None:  # an idle fresh worker: it must join the job first
                worker.reserved = req
                out.append(self._join(worker, req))
                continue
            worker = WorkerSlots.pick(starting, req.job_id, gpu_ids)
            if worker is None:
                out.append(self._new_worker())
                worker = self.workers[out[-1].worker_id]
            worker.reserved = req
        return out

    def _join(self, worker: WorkerSlot, req: Request) -> E.AssignJob:
        worker.state, worker.job_id = WorkerState.JOINING, req.job_id
        return E.AssignJob(worker.worker_id, req.job_id)

    def _new_worker(self) -> E.SpawnWorker:
        return E.SpawnWorker(self.workers.spawn().worker_id)

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
        self.pools.keep_only(req.pool_key, req.shape, req.hold)
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
        self.pools.give_back(lease.pool_key, lease.to_give_back(), lease.gpu_ids)
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
        self.pools.lend(worker.lease.pool_key, worker.lease.shape.get("CPU", 0))
        return self._schedule()

    def _worker_unblocked(self, ev: E.WorkerUnblocked) -> list:
        worker = self.workers.get(ev.worker_id)
        if worker is not None and worker.lease is not None \
                and worker.lease.state is LeaseState.LENT:
            worker.lease.state = LeaseState.HELD
            # take its CPUs back, briefly oversubscribing if they were leased meanwhile
            self.pools.reclaim(worker.lease.pool_key, worker.lease.shape.get("CPU", 0))
        return []

    def _worker_kill_requested(self, ev: E.WorkerKillRequested) -> list:
        worker = self.workers.get(ev.worker_id)
        mine = worker is not None and worker.holder == ev.caller
        return [E.KillWorker(ev.worker_id)] if mine else []

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
        for worker in self.workers.held_by(ev.caller):
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
        for worker in self.workers.of_job(ev.job_id):
            out += self._end(worker, requeue=True)
        if self.shared:  # the next job should not wait for workers to start
            fresh = self.workers.fresh()
            out += [self._new_worker() for _ in range(max(0, self.prestart - fresh))]
        return out + self._schedule()

    # --- actors --------------------------------------------------------------------------
    def _actor_withdrawn(self, ev: E.ActorWithdrawn) -> list:
        self.queue.remove_if(lambda r: r.actor_id == ev.actor_id)
        return []

    def _actor_killed(self, ev: E.ActorKilled) -> list:
        if self.queue.remove_if(lambda r: r.actor_id == ev.actor_id):
            return [E.ReportActorDied(ev.actor_id, "it was killed before it started")]
        worker = self.workers.of_actor(ev.actor_id)
        if worker is not None:
            return [E.KillWorker(worker.worker_id)]
        # its worker may still be starting (or it was never here): remember a bounded few
        self._killed_actors[ev.actor_id] = None
        while len(self._killed_actors) > MAX_KILLED_ACTORS:
            del self._killed_actors[next(iter(self._killed_actors))]
        return []


    # --- placement groups' bundles --------------------------------------------------------
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
        for worker in self.workers.in_pools(ended):
            req = worker.reserved
            out += self._end(worker, requeue=False)
            out += [fail(req)] if req is not None else []
        self.pools.end(ended)
        return [*out, self._report(), *self._schedule()]
