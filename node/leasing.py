"""The lease scheduler's shell: lease and actor messages in, its instructions carried out.

:class:`Leasing` turns the messages about leases and actor placement into
:mod:`.lease_events`, hands them to the pure :class:`.lease_scheduler.LeaseScheduler`, and
carries out the instructions it returns on links and on the :class:`.workers.WorkerTable`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from aray import _protocol as P
from aray._link import CONTROL_TIMEOUT, Link
from aray._runtime_env import describe, env_key, setup_timeout

from . import lease_events as E
from .accelerators import device_ids
from .lease_scheduler import LeaseScheduler
from .workers import WorkerHandle, WorkerTable


class Leasing:
    """Leases of this node's workers: the messages, the scheduler, the instructions.

    Args:
        scheduler: the decisions.
        workers: the worker processes the instructions act on.
        node_id: this node, as leases name it.
        code_paths: job id -> where its driver's modules are (shared, not copied).
        head: the link to the head, or None (called when needed).
        spawn_task: runs a coroutine as a task the agent owns.
    """

    def __init__(self, scheduler: LeaseScheduler, workers: WorkerTable, node_id: str,
                 code_paths: dict, head: Callable[[], Link | None],
                 spawn_task: Callable) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self.node_id = node_id
        self.closed = False  # the agent is closing: nothing more is decided
        self._code_paths = code_paths
        #: the device of each GPU slot of the scheduler (see accelerators.device_ids)
        self.devices = device_ids(int(scheduler.pool.total.get("GPU", 0)))
        #: worker pool (``JOB:ENV``) -> the wire form of its runtime env; workers are pooled
        #: per job and env, and set the env up when they join the pool
        self.envs: dict[str, dict] = {}
        # the cluster as the head last described it: node id -> [node_id, address, total,
        # free], in the order the nodes joined (a ClusterViewChanged, then its updates)
        self.view: dict[str, list] = {}
        self._head = head
        self._spawn_task = spawn_task
        self._carry_out: dict[type, Callable] = {
            E.GrantLease: self._grant_lease,
            E.SpillBack: lambda ins: ins.caller.send(P.LeaseSpillback(ins.req_id, ins.address)),
            E.SpawnWorker: lambda ins: self.workers.spawn(ins.worker_id),
            E.AssignJob: self._assign_job,
            E.StartActor: self._start_actor,
            E.KillWorker: lambda ins: self.workers.kill(ins.worker_id),
            E.ReportResources: lambda ins: self.to_head(
                P.NodeResourcesChanged(self.node_id, ins.available)),
            E.WarnInfeasible: lambda ins: ins.caller.send(
                P.LeaseInfeasible(ins.req_id, ins.message, ins.actor_id)),
            E.ReportActorDied: lambda ins: self.to_head(P.ActorDied(ins.actor_id, ins.reason)),
            E.FailRequest: self._fail_request,
            E.AnswerBundles: lambda ins: ins.caller.send_if_open(
                P.BundlesReserved(ins.req_id, ins.ok)),
        }

    def feed(self, event) -> None:
        """Hand an event to the lease scheduler and carry out what it decides."""
        if self.closed:
            return
        for instruction in self.scheduler.handle(event):
            self._carry_out[type(instruction)](instruction)

    def to_head(self, msg) -> None:
        """Send ``msg`` to the head, if the link to it is open."""
        head = self._head()
        if head is not None and not head.closed:
            head.send(msg)

    # --- instructions --------------------------------------------------------------------
    def _grant_lease(self, ins: E.GrantLease) -> None:
        # the scheduler only compares callers (Hashable); the events this shell makes name
        # each by its link
        caller = cast(Link, ins.caller)
        if caller.closed:  # gone since it asked: the worker is free again
            self.feed(E.LeaseReturned(caller, ins.worker_id))
            return
        handle = self.workers.handles[ins.worker_id]
        caller.send(P.LeaseGranted(ins.req_id, ins.worker_id, handle.address, self.node_id,
                                   self._devices(ins.gpu_ids)))

    def pool(self, job_id: str, runtime_env: dict) -> str:
        """The worker pool of a job's requests with ``runtime_env`` (the job id itself
        for none)."""
        if not runtime_env:
            return job_id
        pool = f"{job_id}:{env_key(runtime_env)}"
        self.envs.setdefault(pool, runtime_env)
        return pool

    def job_finished(self, job_id: str) -> None:
        """Forget the runtime envs of a job that ended."""
        for pool in [p for p in self.envs if p.startswith(job_id + ":")]:
            del self.envs[pool]

    def _fail_request(self, ins: E.FailRequest) -> None:
        if ins.actor_id:
            self.to_head(P.ActorDied(ins.actor_id, ins.message))
        else:
            cast(Link, ins.caller).send_if_open(P.LeaseFailed(ins.req_id, ins.message,
                                                              ins.kind))

    def _assign_job(self, ins: E.AssignJob) -> None:
        handle = self.workers.handles[ins.worker_id]
        handle.job_id = ins.job_id
        self._spawn_task(self._join_job(handle, ins.job_id), "assign job")

    async def _join_job(self, handle: WorkerHandle, pool: str) -> None:
        """A fresh worker imports the job's code, and sets up the pool's runtime env,
        before its first lease of that pool."""
        ok, error = False, ""
        job_id = pool.partition(":")[0]
        env = self.envs.get(pool, {})
        timeout = setup_timeout(env) if env else 0.0
        if handle.link is not None:
            try:
                reply = await handle.link.request(lambda r: P.AssignJob(
                    r, job_id, self._code_paths.get(job_id, []), env),
                    timeout=None if timeout is None else timeout + CONTROL_TIMEOUT)
                ok, error = not reply.error, reply.error
            except TimeoutError:
                if env:  # (a pip install that hangs, a head that sends no package)
                    error = (f"setting up the runtime env {describe(env)} took longer than "
                             f"setup_timeout_seconds={timeout:g}")
            except ConnectionError:
                pass
        self.feed(E.JobAssigned(handle.worker_id, ok, error))

    def _start_actor(self, ins: E.StartActor) -> None:
        handle = self.workers.handles[ins.worker_id]
        handle.actor_id = ins.actor_id
        assert handle.link is not None
        handle.link.send(P.CreateActor(ins.actor_id, dict(
            ins.spec, gpu_ids=self._devices(ins.gpu_ids))))

    def _devices(self, slots: list) -> list:
        """The devices of the scheduler's GPU slots (what CUDA_VISIBLE_DEVICES names)."""
        return [self.devices[i] if i < len(self.devices) else i for i in slots]

    # --- messages ------------------------------------------------------------------------
    def _on_RequestLease(self, link: Link, msg: P.RequestLease) -> None:
        # ``spilled``: sent here by another node's spillback, so it is not sent on
        strategy, may_spillback = msg.strategy, not msg.spilled
        if strategy.get("kind") == "node" and strategy["node_id"] == self.node_id:
            strategy, may_spillback = {}, False  # this node was asked for: it stays here
        self.feed(E.LeaseRequested(link, msg.req_id, msg.shape, msg.description,
                                   self.pool(msg.job_id, msg.runtime_env), may_spillback,
                                   strategy))

    def _on_ReturnLease(self, link: Link, msg: P.ReturnLease) -> None:
        self.feed(E.LeaseReturned(link, msg.worker_id))

    def _on_WorkerBlocked(self, link: Link, msg: P.WorkerBlocked) -> None:
        self.feed(E.WorkerBlocked(msg.worker_id))

    def _on_WorkerUnblocked(self, link: Link, msg: P.WorkerUnblocked) -> None:
        self.feed(E.WorkerUnblocked(msg.worker_id))

    def _on_KillWorker(self, link: Link, msg: P.KillWorker) -> None:
        self.feed(E.WorkerKillRequested(link, msg.worker_id))

    def _on_ClusterViewChanged(self, link: Link, msg: P.ClusterViewChanged) -> None:
        self.view = {entry[0]: entry for entry in msg.nodes}
        self.feed(E.ViewChanged(msg.nodes, self.node_id))

    def _on_ClusterViewUpdated(self, link: Link, msg: P.ClusterViewUpdated) -> None:
        for entry in msg.changed:
            self.view[entry[0]] = entry  # in its place, or last for a node that joined
        for node_id in msg.removed:
            self.view.pop(node_id, None)
        self.feed(E.ViewChanged(list(self.view.values()), self.node_id))

    def _on_CreateActor(self, link: Link, msg: P.CreateActor) -> None:
        """From the head: find (or start) a worker for this actor and construct it there."""
        spec = msg.spec
        strategy = spec.get("scheduling_strategy") or {}
        bundle = ((strategy["pg_id"], int(strategy.get("index", -1)))
                  if strategy.get("kind") == "pg" else None)
        self.feed(E.ActorPlacementRequested(
            link, msg.actor_id, spec["placement"], spec["hold"],
            spec.get("description", "actor"),
            self.pool(spec.get("job_id", ""), spec.get("runtime_env") or {}), spec, bundle))

    def _on_ReserveBundles(self, link: Link, msg: P.ReserveBundles) -> None:
        self.feed(E.BundlesRequested(link, msg.req_id, msg.pg_id, msg.bundles))

    def _on_ReleaseBundles(self, link: Link, msg: P.ReleaseBundles) -> None:
        self.feed(E.BundlesReleased(msg.pg_id, msg.indexes))

    def _on_WithdrawActor(self, link: Link, msg: P.WithdrawActor) -> None:
        self.feed(E.ActorWithdrawn(msg.actor_id))

    def _on_KillActor(self, link: Link, msg: P.KillActor) -> None:
        self.feed(E.ActorKilled(msg.actor_id))

    def _on_ActorStarted(self, link: Link, msg: P.ActorStarted) -> None:
        self.to_head(msg)
