"""A process's worker leases, per resource shape: how a queued task gets a worker.

A task whose arguments are ready joins the queue of its resource shape (the same
resources, runtime env and strategy: :attr:`~aray._tasks.TaskSpec.shape_key`).
:class:`WorkerLeases` asks the node agent for leases for each queue (a few at a time,
following spillback to other nodes and a placement group's bundle to its node), hands the
queued tasks to leased workers with room, keeps an idle lease a moment for the next task,
and gives it back when the queue stays empty. What becomes of a task once it is pushed
(its reply, its retries, its cancel) is the :class:`~aray._tasks.TaskSubmitter`'s.

A leased worker takes up to :data:`MAX_IN_FLIGHT_PER_WORKER` tasks at a time, so that it
runs the next one as soon as it is done with one, without waiting for a round trip to this
process. A task queued behind another on a busy worker has not lost its claim to a worker
of its own: the queue still asks for a lease for it, and a worker that becomes idle (a new
lease, or one that ran out of tasks) takes it back from the busiest one
(:class:`~aray._protocol.TakeBackTask`), unless it has started there meanwhile. So tasks
spread over free workers as they would one at a time, and only wait behind another while
no worker is free for them. Tasks with ``max_calls`` (their worker exits after them),
streaming generators (which run as long as their consumer reads) and ``"SPREAD"`` tasks
are never queued behind another, nor another behind them.

Example:
    >>> LEASE_LINGER < SPILLBACK_RETRY_DELAY
    True
"""

from __future__ import annotations

import asyncio
import functools
import itertools
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
#: tasks pushed to one leased worker before waiting for its results (beyond the first, they
#: wait there only until a worker of their own is free: see the module's docstring)
MAX_IN_FLIGHT_PER_WORKER = 8
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
                 "queue", "linger", "retiring", "taking_back")

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
        self.taking_back: set[bytes] = set()  # in flight, asked back (TakeBackTask)

    def extras(self) -> int:
        """Tasks queued at the worker behind its running one, not asked back yet."""
        return len(self.in_flight) - 1 - len(self.taking_back)

    def accepts(self, spec: TaskSpec) -> bool:
        """Room for ``spec``: the worker is idle, or may queue it behind what it runs."""
        if self.retiring:
            return False
        if not self.in_flight:
            return True
        return (len(self.in_flight) < MAX_IN_FLIGHT_PER_WORKER and queues_behind(spec)
                and queues_behind(next(iter(self.in_flight.values()))))


def queues_behind(spec: TaskSpec) -> bool:
    """May ``spec`` wait behind another task on a worker, or another behind it? Not with
    ``max_calls`` (the worker may exit after it), nor streaming (it runs until read), nor
    ``"SPREAD"`` (it asks for a worker of its own on the least used node).

    A task that may not is only pushed to an idle worker, and nothing is pushed behind it:
    so a worker with more than one task in flight holds only tasks that may.

    Example:
        >>> from types import SimpleNamespace as Spec
        >>> queues_behind(Spec(max_calls=0, streaming=False, strategy={}))
        True
        >>> queues_behind(Spec(max_calls=2, streaming=False, strategy={}))
        False
        >>> queues_behind(Spec(max_calls=0, streaming=False, strategy={"kind": "spread"}))
        False
    """
    return not spec.max_calls and not spec.streaming and (
        spec.strategy.get("kind") != "spread")


class ShapeQueue:
    """Tasks waiting for a worker of one resource shape, and the leases serving them.

    Example:
        >>> q = ShapeQueue({"CPU": 1}, {}, {})
        >>> len(q.tasks), q.leases, q.requesting
        (0, [], 0)
    """

    __slots__ = ("shape", "runtime_env", "strategy", "tasks", "leases", "requesting",
                 "description", "taking_back")

    def __init__(self, shape: dict, runtime_env: dict, strategy: dict) -> None:
        self.shape = shape
        self.runtime_env = runtime_env
        self.strategy = strategy
        self.tasks: deque[TaskSpec] = deque()
        self.leases: list[Lease] = []
        self.requesting = 0
        self.description = ""
        self.taking_back = 0  # TakeBackTask requests of its leases not answered yet


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
        lost: ``lost(spec, ran)`` says whether a task whose worker died runs again (it is
            queued first then) or has failed; ``ran``: it may have started there (the
            worker's first task in flight; those behind it had not).

    Example:
        >>> from types import SimpleNamespace
        >>> def push(lease, spec):
        ...     lease.in_flight[spec.task_id] = spec
        ...     print("push", spec.task_id, "to", lease.worker_id)
        >>> leases = WorkerLeases(None, push, print, lambda spec, ran: True)
        >>> q = ShapeQueue({"CPU": 1}, {}, {})
        >>> q.leases.append(Lease(P.LeaseGranted(0, "w1", "unix:/w1", "n1", []), None, None, q))
        >>> q.tasks.append(SimpleNamespace(task_id=b"t1"))
        >>> leases.pump(q)  # a leased worker with room: no lease to ask for
        push b't1' to w1
    """

    def __init__(self, host: LeaseHost, push: Callable[[Lease, TaskSpec], None],
                 fail: Callable[[TaskSpec, BaseException], None],
                 lost: Callable[[TaskSpec, bool], bool]) -> None:
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
        """Push queued tasks to leased workers; ask for more leases; have idle workers take
        back tasks queued behind others; return idle leases."""
        while q.tasks:
            spec = q.tasks[0]
            lease = None
            for candidate in q.leases:  # the least busy one with room
                if (lease is None or len(candidate.in_flight) < len(lease.in_flight)) and (
                        candidate.accepts(spec)):
                    lease = candidate
            if lease is None:
                break
            if lease.linger is not None:  # in use again: it stays
                lease.linger.cancel()
                lease.linger = None
            self._push(lease, q.tasks.popleft())
        # a task queued behind another still wants a worker of its own
        behind = sum(len(lease.in_flight) - 1 for lease in q.leases if lease.in_flight)
        want = min(len(q.tasks) + behind, MAX_PENDING_LEASES) - q.requesting
        for _ in range(max(0, want)):
            q.requesting += 1
            self.host.spawn(self._request_lease(q), name="lease")
        if not q.tasks:
            idle = [lease for lease in q.leases if not lease.in_flight and not lease.retiring]
            if behind:
                self._take_back(q, len(idle) - q.taking_back)
            for lease in idle:
                if lease.linger is None:
                    lease.linger = self.host.loop.call_later(
                        LEASE_LINGER, self._return_lease, lease)

    def _take_back(self, q: ShapeQueue, count: int) -> None:
        """Ask the busiest workers of ``q`` for ``count`` tasks queued behind their running
        one, for idle workers to run: the oldest first, so that tasks start in the order
        they were submitted, as they would one at a time."""
        for _ in range(count):
            donor = max(q.leases, key=Lease.extras)
            if donor.extras() <= 0:
                return
            queued = itertools.islice(donor.in_flight.values(), 1, None)  # behind the first
            spec = next(s for s in queued if s.task_id not in donor.taking_back)
            donor.taking_back.add(spec.task_id)
            q.taking_back += 1
            donor.link.send(P.TakeBackTask(spec.task_id))

    def answered(self, lease: Lease, task_id: bytes) -> None:
        """``task_id``, in flight on ``lease``, was answered or given back: a request to
        take it back is over."""
        if task_id in lease.taking_back:
            lease.taking_back.discard(task_id)
            lease.queue.taking_back -= 1

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
                q.taking_back -= len(lease.taking_back)
                lease.taking_back.clear()
                # the worker runs its tasks in order: only the first may have started
                again = [spec for i, spec in enumerate(lease.in_flight.values())
                         if self._lost(spec, i == 0)]
                q.tasks.extendleft(reversed(again))  # first in the queue, in their order
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
