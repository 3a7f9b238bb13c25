"""A process's worker leases, per resource shape: how a queued task gets a worker.

A task whose arguments are ready joins the queue of its resource shape (the same
resources, runtime env and strategy: :attr:`~aray._tasks.TaskSpec.shape_key`).
:class:`WorkerLeases` asks the node agent for leases for each queue (a few at a time,
following spillback to other nodes and a placement group's bundle to its node), hands the
queued tasks to leased workers with room, keeps an idle lease a moment for the next task,
and gives it back when the queue stays empty. What becomes of a task once it is pushed
(its reply, its retries, its cancel) is the :class:`~aray._tasks.TaskSubmitter`'s.

Example:
    >>> LEASE_LINGER < SPILLBACK_RETRY_DELAY
    True
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Protocol

from . import _protocol as P
from ._link import Link
from ._runtime_env import describe
from .exceptions import (
    AraySystemError,
    RequestTimeoutError,
    RuntimeEnvSetupError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
)
from .node.scheduler import fits

if TYPE_CHECKING:
    from ._runtime_env_client import RuntimeEnvs
    from ._tasks import TaskSpec

log = logging.getLogger("aray")

#: after a node that a request was sent to has gone, wait this long before asking again
SPILLBACK_RETRY_DELAY = 0.2
#: tasks pushed to one leased worker before waiting for its results
MAX_IN_FLIGHT_PER_WORKER = 1
#: outstanding lease requests per resource shape (the agent queues the rest of the demand)
MAX_PENDING_LEASES = 10
#: an idle lease is kept this long before it goes back to the node agent, so a loop of
#: ``get(f.remote())`` reuses one worker instead of asking for a lease per task
LEASE_LINGER = 0.005


class Lease:
    """A worker leased from a node agent, and the tasks pushed to it that have not replied.

    Example:
        >>> q = ShapeQueue({"CPU": 1}, {}, {})
        >>> lease = Lease(P.LeaseGranted(0, "w1", "unix:/w1.sock", "n1", []), None, None, q)
        >>> lease.worker_id, lease.in_flight, lease.retiring
        ('w1', {}, False)
    """

    __slots__ = ("worker_id", "address", "node_id", "gpu_ids", "link", "agent", "in_flight",
                 "queue", "linger", "retiring")

    def __init__(self, grant: P.LeaseGranted, link: Link, agent: Link,
                 queue: ShapeQueue) -> None:
        self.worker_id = grant.worker_id
        self.address = grant.address
        self.node_id = grant.node_id
        self.gpu_ids = grant.gpu_ids
        self.link = link  # to the worker
        self.agent = agent  # to the node agent that granted it (this node's, or another's)
        self.in_flight: dict[bytes, TaskSpec] = {}  # the submitter's: pushed, not answered
        self.queue = queue
        self.linger: asyncio.TimerHandle | None = None
        self.retiring = False  # the worker exits after its running task (max_calls)


class ShapeQueue:
    """Tasks waiting for a worker of one resource shape, and the leases serving them.

    Example:
        >>> q = ShapeQueue({"CPU": 1}, {}, {})
        >>> len(q.tasks), q.leases, q.requesting
        (0, [], 0)
    """

    __slots__ = ("shape", "runtime_env", "strategy", "tasks", "leases", "requesting",
                 "description")

    def __init__(self, shape: dict, runtime_env: dict, strategy: dict) -> None:
        self.shape = shape
        self.runtime_env = runtime_env
        self.strategy = strategy
        self.tasks: deque[TaskSpec] = deque()
        self.leases: list[Lease] = []
        self.requesting = 0
        self.description = ""


async def ask_for_lease(own: Link, peer: Callable[[str], Awaitable[Link]], shape: dict,
                        description: str, job_id: str, runtime_env: dict | None = None,
                        strategy: dict | None = None,
                        locate: Callable[[dict, dict], Awaitable[str]] | None = None,
                        ) -> tuple[P.LeaseGranted, Link]:
    """A worker lease for ``shape`` (in ``runtime_env``, its wire form): from this node's
    agent ``own``, or from the agent of the node it sends us to (spillback); for a
    placement group's bundle, from the agent ``locate(strategy, shape)`` names (asked
    again when the bundle moved). Returns the grant and the agent that granted it; raises
    ConnectionError if our own agent is gone, RuntimeEnvSetupError if the env cannot be
    set up, TaskPlacementGroupRemoved if the group is gone.

    Example:
        >>> class Agent:  # a node agent that grants every request at once
        ...     async def request(self, make, timeout):
        ...         return P.LeaseGranted(0, "w1", "unix:/w1.sock", "n1", [])
        >>> agent = Agent()
        >>> grant, by = asyncio.run(ask_for_lease(agent, None, {"CPU": 1}, "f", "job"))
        >>> grant.worker_id, by is agent
        ('w1', True)
    """
    agent, spilled = own, False
    in_group = (strategy or {}).get("kind") == "pg"
    while True:
        if in_group:
            assert locate is not None
            try:
                agent, spilled = await peer(await locate(strategy or {}, shape)), True
            except (ConnectionError, OSError):  # that node died: the head hears of it
                await asyncio.sleep(SPILLBACK_RETRY_DELAY)
                continue
        try:
            # granted when the node has room, however long that takes; if that node
            # dies, the link closes (NodeDied) and we ask our own again
            request = functools.partial(P.RequestLease, shape=shape, description=description,
                                        job_id=job_id, spilled=spilled,
                                        runtime_env=runtime_env or {},
                                        strategy=strategy or {})
            grant = await agent.request(request, timeout=None)
        except (ConnectionError, OSError):
            if agent is own:
                raise  # our own node agent is gone: the cluster has stopped
            grant = None
        if isinstance(grant, P.LeaseGranted):
            return grant, agent
        if isinstance(grant, P.LeaseFailed):
            if grant.kind == "bundle":  # it moved (its node died) or the group is gone
                await asyncio.sleep(SPILLBACK_RETRY_DELAY)
                continue
            raise (TaskUnschedulableError if grant.kind == "unschedulable"
                   else RuntimeEnvSetupError)(grant.message)
        if grant is not None:  # another node can run it: ask that node's agent
            try:
                agent, spilled = await peer(grant.address), True
                continue
            except (ConnectionError, OSError):
                pass  # it has died, and our agent's view does not know yet
        # that node went away: ask ours again, once it had time to hear of it
        agent, spilled = own, False
        await asyncio.sleep(SPILLBACK_RETRY_DELAY)


class LeaseHost(Protocol):
    """What worker leases need of their process (:class:`~aray._core.Core`)."""

    loop: asyncio.AbstractEventLoop
    job_id: str
    agent: Link | None  # this node's agent, once started
    runtime_envs: RuntimeEnvs

    def spawn(self, coro: Coroutine, name: str = "") -> asyncio.Task: ...

    async def wait_ready(self) -> None: ...

    async def peer(self, address: str) -> Link: ...

    async def head_link(self) -> Link: ...


class WorkerLeases:
    """The worker leases of one process per resource shape, and the tasks queued for them
    (loop only).

    Args:
        host: the process (its loop, node agent, links and runtime envs).
        push: ``push(lease, spec)`` sends a queued task to the worker of ``lease`` (the
            submitter's: it records the task in ``lease.in_flight``).
        fail: ``fail(spec, error)`` fails a queued task that can never get a worker.
        lost: ``lost(spec)`` says whether a task whose worker died runs again (it is
            queued first then) or has failed.

    Example:
        >>> from types import SimpleNamespace
        >>> def push(lease, spec):
        ...     lease.in_flight[spec.task_id] = spec
        ...     print("push", spec.task_id, "to", lease.worker_id)
        >>> leases = WorkerLeases(None, push, print, bool)
        >>> q = ShapeQueue({"CPU": 1}, {}, {})
        >>> q.leases.append(Lease(P.LeaseGranted(0, "w1", "unix:/w1", "n1", []), None, None, q))
        >>> q.tasks.append(SimpleNamespace(task_id=b"t1"))
        >>> leases.pump(q)  # a leased worker with room: no lease to ask for
        push b't1' to w1
    """

    def __init__(self, host: LeaseHost, push: Callable[[Lease, TaskSpec], None],
                 fail: Callable[[TaskSpec, BaseException], None],
                 lost: Callable[[TaskSpec], bool]) -> None:
        self.host = host
        # (bound methods kept as attributes: a push costs no more than the submitter's own)
        self._push = push
        self._fail = fail
        self._lost = lost
        self._queues: dict[tuple, ShapeQueue] = {}
        self._group_turn = 0  # rotates leases for "any bundle" over the bundles' nodes

    def enqueue(self, spec: TaskSpec) -> None:
        """A task whose arguments are ready joins the queue of its shape."""
        key = spec.shape_key
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = ShapeQueue(spec.shape, spec.runtime_env, spec.strategy)
        q.description = spec.name
        q.tasks.append(spec)
        self.pump(q)

    def requeue(self, spec: TaskSpec, q: ShapeQueue) -> None:
        """A task to run again goes first in its queue (:meth:`pump` pushes it)."""
        q.tasks.appendleft(spec)

    def unqueue(self, spec: TaskSpec) -> None:
        """A task cancelled while it waits for a worker leaves its queue."""
        for q in self._queues.values():
            if spec in q.tasks:
                q.tasks.remove(spec)

    def retired(self, lease: Lease) -> None:
        """The worker of ``lease`` exits after its task (``max_calls``); its exit frees
        its resources, so the lease is dropped without a ReturnLease."""
        q = lease.queue
        if lease in q.leases:
            q.leases.remove(lease)

    def pump(self, q: ShapeQueue) -> None:
        """Push queued tasks to leased workers; ask for more leases; return idle ones."""
        while q.tasks:
            lease = None
            for candidate in q.leases:
                busy = len(candidate.in_flight)
                if not candidate.retiring and busy < MAX_IN_FLIGHT_PER_WORKER and (
                        lease is None or busy < len(lease.in_flight)):
                    lease = candidate
            if lease is None:
                break
            if lease.linger is not None:  # in use again: it stays
                lease.linger.cancel()
                lease.linger = None
            self._push(lease, q.tasks.popleft())
        want = min(len(q.tasks), MAX_PENDING_LEASES) - q.requesting
        for _ in range(max(0, want)):
            q.requesting += 1
            self.host.spawn(self._request_lease(q), name="lease")
        if not q.tasks:
            for lease in q.leases:
                if not lease.in_flight and lease.linger is None:
                    lease.linger = self.host.loop.call_later(
                        LEASE_LINGER, self._return_lease, lease)

    def _return_lease(self, lease: Lease) -> None:
        lease.linger = None
        q = lease.queue
        if lease.in_flight or q.tasks or lease not in q.leases:
            return
        q.leases.remove(lease)
        lease.agent.send_if_open(P.ReturnLease(lease.worker_id))

    async def _request_lease(self, q: ShapeQueue) -> None:
        try:
            await self.host.wait_ready()
            assert self.host.agent is not None
            wire = await self._wire(q)
            grant, agent = await ask_for_lease(self.host.agent, self.host.peer, q.shape,
                                               q.description, self.host.job_id, wire,
                                               q.strategy, self._locate_bundle)
        except (RuntimeEnvSetupError, TaskUnschedulableError,
                TaskPlacementGroupRemoved) as exc:
            while q.tasks:  # the others would fail the same way
                self._fail(q.tasks.popleft(), exc)
            return
        except (ConnectionError, OSError) as exc:
            # no node agent (the cluster stopped): nothing queued here can ever run
            while q.tasks:
                self._fail(q.tasks.popleft(), ConnectionError(
                    f"cannot run tasks: the aray node agent is unreachable ({exc}); "
                    "the cluster has stopped"))
            return
        finally:
            q.requesting -= 1
        try:
            link = await self.host.peer(grant.address)
        except (ConnectionError, OSError):  # the worker died before we reached it
            agent.send_if_open(P.ReturnLease(grant.worker_id))
            self.pump(q)
            return
        q.leases.append(Lease(grant, link, agent, q))
        self.pump(q)

    async def _locate_bundle(self, strategy: dict, shape: dict) -> str:
        """The agent address of the node of a group's bundle (for index -1: of one that
        can hold ``shape``, in turn), once the group is placed."""
        head = await self.host.head_link()
        pg_id = strategy["pg_id"]
        reply = await head.request(lambda r: P.WaitPlacementGroup(r, pg_id), timeout=None)
        info = reply.info
        if not info or info.get("state") == "REMOVED":
            raise TaskPlacementGroupRemoved(
                f"the placement group {pg_id} of this task was removed"
                if info else f"there is no placement group {pg_id} in this cluster")
        addresses, index = info["bundle_addresses"], int(strategy.get("index", -1))
        if index >= 0:
            return addresses[index]
        able = [a for i, a in sorted(addresses.items()) if fits(shape, info["bundles"][i])]
        self._group_turn += 1
        return able[self._group_turn % len(able)] if able else next(iter(addresses.values()))

    async def prepare_env(self, env: dict) -> None:
        """Upload ``env`` and have this node set it up in a worker, ahead of the tasks
        that will use it (the worker is returned at once and waits for them)."""
        try:
            await self.host.wait_ready()
            assert self.host.agent is not None
            wire = await self.host.runtime_envs.wire(env)
            grant, agent = await ask_for_lease(self.host.agent, self.host.peer, {},
                                               "the job's runtime env (eager install)",
                                               self.host.job_id, wire)
        except (RuntimeEnvSetupError, ValueError, OSError, AraySystemError) as exc:
            # its tasks will fail with the same cause, where the user sees it
            log.warning("the job's runtime env could not be set up ahead: %s", exc)
            return
        agent.send_if_open(P.ReturnLease(grant.worker_id))

    async def _wire(self, q: ShapeQueue) -> dict:
        """The queue's runtime env with its folders uploaded (RuntimeEnvSetupError if
        that fails: too big, unreadable)."""
        if not q.runtime_env:
            return {}
        try:
            return await self.host.runtime_envs.wire(q.runtime_env)
        except (ValueError, OSError, AraySystemError, RequestTimeoutError) as exc:
            raise RuntimeEnvSetupError(
                f"the runtime env {describe(q.runtime_env)} of {q.description} could not be "
                f"uploaded: {exc}") from exc

    def on_link_closed(self, link: Link) -> None:
        """The leases of a worker behind ``link`` end; the tasks it ran are queued again
        or have failed, as ``lost`` says."""
        for q in list(self._queues.values()):
            for lease in [le for le in q.leases if le.link is link]:
                q.leases.remove(lease)
                for spec in lease.in_flight.values():
                    if self._lost(spec):
                        q.tasks.appendleft(spec)
                lease.in_flight.clear()
                lease.agent.send_if_open(P.ReturnLease(lease.worker_id))
            self.pump(q)

    def _on_LeaseInfeasible(self, link: Link, msg: P.LeaseInfeasible) -> None:
        log.warning(msg.message)  # (the request stays queued: a node that can may join)

    def fail_queued(self, error: BaseException) -> None:
        """The node agent is gone: nothing queued can run any more."""
        for q in self._queues.values():
            while q.tasks:
                self._fail(q.tasks.popleft(), error)
