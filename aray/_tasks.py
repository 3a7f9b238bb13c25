"""Submitting tasks: dependencies, worker leases per resource shape, and retries.

A task waits until its ObjectRef arguments are ready, then joins the queue of its resource
shape. The queue asks the node agent for worker leases (a few at a time), pushes tasks
straight to leased workers, keeps an idle lease a moment for the next task, and gives it
back when the queue stays empty. A worker that dies takes its running tasks with it: they
are retried (``max_retries``) or fail with :class:`~aray.exceptions.WorkerCrashedError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle

from . import _protocol as P
from ._link import Link
from ._objects import INLINE_THRESHOLD, ObjectState
from ._refs import ArgSlot, ObjectRef, collect_refs
from ._runtime_context import job_namespace
from ._runtime_env import describe, env_key
from ._signatures import checker, spec_of
from .exceptions import (
    AraySystemError,
    RequestTimeoutError,
    RuntimeEnvSetupError,
    TaskCancelledError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
    WorkerCrashedError,
    error_from_blob,
)
from .node.scheduler import fits
from .store._serialize import serialize

if TYPE_CHECKING:
    from ._objects import ObjectTable
    from ._ownership import Ownership
    from ._runtime_env_client import RuntimeEnvs
    from ._streams import Streams
    from ._task_events import TaskEventReporter

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


@dataclasses.dataclass(eq=False)
class TaskSpec:
    """A task as its caller tracks it until every return value is resolved."""

    task_id: bytes
    function: FunctionDescriptor
    name: str
    args: bytes
    dep_refs: list[ObjectRef]
    return_ids: list[bytes]
    shape: dict
    max_retries: int
    retry_exceptions: bool | tuple
    job_id: str = ""
    max_calls: int = 0  # its worker exits after this many calls of the function (0: never)
    streaming: bool = False
    parent: bytes = b""  # the task that submitted this one (in a worker), for recursive cancel
    deps: list = dataclasses.field(default_factory=list)  # resolved values, filled at dispatch
    held_entries: list = dataclasses.field(default_factory=list)  # deps held until done
    held_refs: list = dataclasses.field(default_factory=list)  # refs pickled inside the args
    cancelled: bool = False
    force_cancelled: bool = False
    runtime_env: dict = dataclasses.field(default_factory=dict)  # checked, merged, local paths
    strategy: dict = dataclasses.field(default_factory=dict)  # scheduling_strategy's wire form

    @property
    def shape_key(self) -> tuple:
        """Tasks that can share a lease: the same resources, runtime env and strategy."""
        key = tuple(sorted(self.shape.items()))
        if self.runtime_env or self.strategy:
            return (key, env_key(self.runtime_env), _strategy_key(self.strategy))
        return key


def _strategy_key(strategy: dict) -> str:
    """A strategy's wire form as a key (its values may be dicts: a label selector's).

    Example:
        >>> _strategy_key({"kind": "labels", "hard": {"zone": ["in", ["a"]]}})
        '{"hard": {"zone": ["in", ["a"]]}, "kind": "labels"}'
    """
    return json.dumps(strategy, sort_keys=True)


#: Ray's bounds on a pickled function or class (its FUNCTION_SIZE_WARN_THRESHOLD and
#: FUNCTION_SIZE_ERROR_THRESHOLD, about 9.5 and 95 MiB): every worker that runs it loads it,
#: and what is this big is nearly always data captured by mistake
FUNCTION_SIZE_WARN_THRESHOLD = 10**7
FUNCTION_SIZE_ERROR_THRESHOLD = 10**8


def check_function_size(obj: Any, size: int) -> None:
    """Refuse a function or class that pickles to more than
    ``ARAY_FUNCTION_SIZE_ERROR_THRESHOLD`` bytes (Ray's 95 MiB by default); warn above
    ``ARAY_FUNCTION_SIZE_WARN_THRESHOLD``.

    Example:
        >>> check_function_size(len, 10**9)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The remote function len is too large (953.67 MiB > ...
    """
    kind = "actor class" if isinstance(obj, type) else "remote function"
    name = getattr(obj, "__qualname__", repr(obj))
    limit = int(os.environ.get("ARAY_FUNCTION_SIZE_ERROR_THRESHOLD",
                               FUNCTION_SIZE_ERROR_THRESHOLD))
    warn = int(os.environ.get("ARAY_FUNCTION_SIZE_WARN_THRESHOLD",
                              FUNCTION_SIZE_WARN_THRESHOLD))
    mib = 2**20
    what = (f"The {kind} {name} is too large ({size / mib:.2f} MiB > "
            "FUNCTION_SIZE_{}_THRESHOLD={:.2f} MiB). Check that its definition is not "
            "implicitly capturing a large array or other object in scope. Tip: use "
            "aray.put() to put large objects in the object store and pass the ref instead.")
    if size > limit:
        raise ValueError(what.format("ERROR", limit / mib))
    if size > warn:
        log.warning(what.format("WARN", warn / mib))


class FunctionDescriptor:
    """A remote function pickled once per process and shipped once per worker link."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._lock = threading.Lock()
        self._blob: bytes | None = None
        self._id: bytes | None = None
        self._check: Callable[[tuple, dict], None] | None = None

    def check_args(self, args: tuple, kwargs: dict) -> None:
        """Raise TypeError (naming the function) if the arguments do not bind to it."""
        if self._check is None:  # (made once: every options() copy shares this descriptor)
            name = getattr(self.fn, "__qualname__", "remote_function")
            self._check = checker(spec_of(self.fn), f"{name}.remote")
        self._check(args, kwargs)

    def blob_and_id(self) -> tuple[bytes, bytes]:
        if self._blob is None:
            with self._lock:
                if self._blob is None:
                    try:
                        # the source file travels along: cloudpickle blanks it in code it
                        # pickles by value, and tracebacks should point at the user's code
                        source = _source_file(self.fn)
                        blob = cloudpickle.dumps((self.fn, source), protocol=5)
                    except Exception as exc:
                        name = getattr(self.fn, "__qualname__", repr(self.fn))
                        raise TypeError(
                            f"remote function {name} cannot be pickled: {exc}. A remote function "
                            "must not capture locks, sockets, open files or similar objects; "
                            "create those inside the function instead."
                        ) from exc
                    check_function_size(self.fn, len(blob))
                    self._id = hashlib.blake2b(blob, digest_size=16).digest()
                    self._blob = blob
        assert self._id is not None
        return self._blob, self._id

    def __getstate__(self):
        return {"fn": self.fn}

    def __setstate__(self, state) -> None:
        FunctionDescriptor.__init__(self, state["fn"])


class _Lease:
    __slots__ = ("worker_id", "address", "node_id", "gpu_ids", "link", "agent", "in_flight",
                 "queue", "linger", "retiring")

    def __init__(self, grant: P.LeaseGranted, link: Link, agent: Link,
                 queue: _ShapeQueue) -> None:
        self.worker_id = grant.worker_id
        self.address = grant.address
        self.node_id = grant.node_id
        self.gpu_ids = grant.gpu_ids
        self.link = link  # to the worker
        self.agent = agent  # to the node agent that granted it (this node's, or another's)
        self.in_flight: dict[bytes, TaskSpec] = {}
        self.queue = queue
        self.linger: asyncio.TimerHandle | None = None
        self.retiring = False  # the worker exits after its running task (max_calls)


class _ShapeQueue:
    """Tasks waiting for a worker of one resource shape, and the leases serving them."""

    __slots__ = ("shape", "runtime_env", "strategy", "tasks", "leases", "requesting",
                 "description")

    def __init__(self, shape: dict, runtime_env: dict, strategy: dict) -> None:
        self.shape = shape
        self.runtime_env = runtime_env
        self.strategy = strategy
        self.tasks: deque[TaskSpec] = deque()
        self.leases: list[_Lease] = []
        self.requesting = 0
        self.description = ""


def load_function(blob: bytes) -> Callable:
    """Unpickle a FunctionDescriptor blob, pointing blanked code back at its source file."""
    fn, source = cloudpickle.loads(blob)
    if source:
        functions = [v for v in vars(fn).values()] if isinstance(fn, type) else [fn]
        for f in functions:  # a class: point each of its methods at the source too
            f = getattr(f, "__func__", f)
            code = getattr(f, "__code__", None)
            if code is not None and code.co_filename == "<dynamic-code>":
                try:
                    f.__code__ = _with_filename(code, source)
                except (TypeError, ValueError, AttributeError):
                    pass
    return fn


def _source_file(obj) -> str:
    code = getattr(obj, "__code__", None)
    if code is not None:
        return code.co_filename
    if isinstance(obj, type):
        for value in vars(obj).values():
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None:
                return code.co_filename
    return ""


def _with_filename(code, filename: str):
    consts = tuple(_with_filename(c, filename) if isinstance(c, type(code)) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def serialize_args(args: tuple, kwargs: dict, describe: Callable[[], str]):
    """Pickle task arguments with top-level refs replaced by :class:`ArgSlot`.

    Returns ``(blob, dep_refs, held)``: ``held`` are the refs pickled inside the arguments,
    which the caller keeps until the task is done (the worker registers as their borrower
    meanwhile). Large plain arguments are put into the store by the caller and passed as
    dependencies, so the task message itself stays small.
    Raises TypeError naming the argument that cannot be pickled.
    """
    if not args and not kwargs:
        return _NO_ARGS, [], []
    deps: list[ObjectRef] = []

    def slot(value):
        if isinstance(value, ObjectRef):
            deps.append(value)
            return ArgSlot(len(deps) - 1)
        return value

    sargs = tuple(slot(a) for a in args)
    skwargs = {k: slot(v) for k, v in kwargs.items()}
    try:
        ser, held = collect_refs(serialize, (sargs, skwargs))
    except Exception as exc:
        raise _unpicklable_argument(args, kwargs, describe(), exc) from exc
    if ser.total_size > INLINE_THRESHOLD:
        from . import _global

        core = _global.core()

        def put_large(value):
            if isinstance(value, ArgSlot):
                return value
            one, inside = collect_refs(serialize, value)
            if one.total_size > INLINE_THRESHOLD // 4:
                deps.append(core.ownership.put_serialized(one, inside))
                return ArgSlot(len(deps) - 1)
            return value

        sargs = tuple(put_large(a) for a in sargs)
        skwargs = {k: put_large(v) for k, v in skwargs.items()}
        ser, held = collect_refs(serialize, (sargs, skwargs))
    return ser.to_bytes(), deps, held


_NO_ARGS = serialize(((), {})).to_bytes()


def _unpicklable_argument(args, kwargs, where: str, exc: Exception) -> TypeError:
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        if isinstance(value, ObjectRef):
            continue
        try:
            cloudpickle.dumps(value, protocol=5)
        except Exception as inner:
            return TypeError(
                f"{label} of {where} ({type(value).__name__}) cannot be pickled: {inner}. "
                "Arguments travel to another process; pass something picklable, or create "
                "the object inside the task."
            )
    return TypeError(f"the arguments of {where} cannot be pickled: {exc}")


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
    set up, TaskPlacementGroupRemoved if the group is gone."""
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


class SubmitHost(Protocol):
    """What the task submitter needs of its process (:class:`~aray._core.Core`)."""

    loop: asyncio.AbstractEventLoop
    address: str  # the owner named in the results' refs
    job_id: str
    session_dir: str
    agent: Link | None  # this node's agent, once started
    objects: ObjectTable
    ownership: Ownership
    streams: Streams
    task_events: TaskEventReporter
    runtime_envs: RuntimeEnvs

    def spawn(self, coro: Coroutine, name: str = "") -> asyncio.Task: ...

    async def wait_ready(self) -> None: ...

    async def peer(self, address: str) -> Link: ...

    async def head_link(self) -> Link: ...


class TaskSubmitter:
    """This process's submitted tasks, from ``f.remote()`` until their results arrive."""

    def __init__(self, core: SubmitHost) -> None:
        self.core = core
        self._queues: dict[tuple, _ShapeQueue] = {}
        self._running: dict[bytes, _Lease] = {}  # task id -> lease running it
        self._waiting: dict[bytes, TaskSpec] = {}  # task id -> spec waiting for deps/lease
        self.lineage: dict[bytes, TaskSpec] = {}  # stored result id -> the task that made it
        self._unreported: list[TaskSpec] = []  # waiting tasks whose state the head lacks
        self._group_turn = 0  # rotates leases for "any bundle" over the bundles' nodes

    def accept(self, spec: TaskSpec) -> None:
        """Loop only (scheduled by ``Core.submit``): track ``spec`` until it has run."""
        for oid in spec.return_ids:
            self.core.objects.add(oid, owned=True)
        spec.job_id = spec.job_id or self.core.job_id
        self._waiting[spec.task_id] = spec
        self._unreported.append(spec)
        self.core.task_events.wake()
        if not spec.dep_refs:
            self._enqueue(spec)
            return
        remaining = [len(spec.dep_refs)]

        def dep_ready(_entry) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._deps_ready(spec)

        for ref in spec.dep_refs:
            self.core.objects.when_ready(self.core.ownership.entry_for(ref), dep_ready)

    def _deps_ready(self, spec: TaskSpec) -> None:
        if spec.task_id not in self._waiting:  # cancelled meanwhile
            return
        entries = [self.core.ownership.entry_for(r) for r in spec.dep_refs]
        for entry in entries:
            if entry.state is ObjectState.FAILED:
                self._fail_task(spec, entry.error)
                return
        spec.deps = [[e.oid, e.resolved_value()] for e in entries]
        for e in entries:
            self.core.objects.hold(e)
        spec.held_entries = entries
        spec.dep_refs = []  # the holds keep the objects now
        self._unreported.append(spec)  # now waiting for a worker
        self._enqueue(spec)

    def _enqueue(self, spec: TaskSpec) -> None:
        key = spec.shape_key
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _ShapeQueue(spec.shape, spec.runtime_env, spec.strategy)
        q.description = spec.name
        q.tasks.append(spec)
        self._pump(q)

    def _pump(self, q: _ShapeQueue) -> None:
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
            self._push(lease, q.tasks.popleft())
        want = min(len(q.tasks), MAX_PENDING_LEASES) - q.requesting
        for _ in range(max(0, want)):
            q.requesting += 1
            self.core.spawn(self._request_lease(q), name="lease")
        if not q.tasks:
            for lease in q.leases:
                if not lease.in_flight and lease.linger is None:
                    lease.linger = self.core.loop.call_later(
                        LEASE_LINGER, self._return_lease, lease)

    def _return_lease(self, lease: _Lease) -> None:
        lease.linger = None
        q = lease.queue
        if lease.in_flight or q.tasks or lease not in q.leases:
            return
        q.leases.remove(lease)
        lease.agent.send_if_open(P.ReturnLease(lease.worker_id))

    async def _request_lease(self, q: _ShapeQueue) -> None:
        try:
            await self.core.wait_ready()
            assert self.core.agent is not None
            wire = await self._wire(q)
            grant, agent = await ask_for_lease(self.core.agent, self.core.peer, q.shape,
                                               q.description, self.core.job_id, wire,
                                               q.strategy, self._locate_bundle)
        except (RuntimeEnvSetupError, TaskUnschedulableError,
                TaskPlacementGroupRemoved) as exc:
            while q.tasks:  # the others would fail the same way
                self._fail_task(q.tasks.popleft(), exc)
            return
        except (ConnectionError, OSError) as exc:
            # no node agent (the cluster stopped): nothing queued here can ever run
            while q.tasks:
                self._fail_task(q.tasks.popleft(), ConnectionError(
                    f"cannot run tasks: the aray node agent is unreachable ({exc}); "
                    "the cluster has stopped"))
            return
        finally:
            q.requesting -= 1
        try:
            link = await self.core.peer(grant.address)
        except (ConnectionError, OSError):  # the worker died before we reached it
            agent.send_if_open(P.ReturnLease(grant.worker_id))
            self._pump(q)
            return
        q.leases.append(_Lease(grant, link, agent, q))
        self._pump(q)

    async def _locate_bundle(self, strategy: dict, shape: dict) -> str:
        """The agent address of the node of a group's bundle (for index -1: of one that
        can hold ``shape``, in turn), once the group is placed."""
        head = await self.core.head_link()
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
            await self.core.wait_ready()
            assert self.core.agent is not None
            wire = await self.core.runtime_envs.wire(env)
            grant, agent = await ask_for_lease(self.core.agent, self.core.peer, {},
                                               "the job's runtime env (eager install)",
                                               self.core.job_id, wire)
        except (RuntimeEnvSetupError, ValueError, OSError, AraySystemError) as exc:
            # its tasks will fail with the same cause, where the user sees it
            log.warning("the job's runtime env could not be set up ahead: %s", exc)
            return
        agent.send_if_open(P.ReturnLease(grant.worker_id))

    async def _wire(self, q: _ShapeQueue) -> dict:
        """The queue's runtime env with its folders uploaded (RuntimeEnvSetupError if
        that fails: too big, unreadable)."""
        if not q.runtime_env:
            return {}
        try:
            return await self.core.runtime_envs.wire(q.runtime_env)
        except (ValueError, OSError, AraySystemError, RequestTimeoutError) as exc:
            raise RuntimeEnvSetupError(
                f"the runtime env {describe(q.runtime_env)} of {q.description} could not be "
                f"uploaded: {exc}") from exc

    def _push(self, lease: _Lease, spec: TaskSpec) -> None:
        self._waiting.pop(spec.task_id, None)
        sent = lease.link.state.setdefault("functions", set())
        fn_blob, fn_id = spec.function.blob_and_id()
        blob: bytes | None = None
        if fn_id not in sent:
            sent.add(fn_id)
            blob = fn_blob
        if lease.linger is not None:
            lease.linger.cancel()
            lease.linger = None
        lease.in_flight[spec.task_id] = spec
        self._running[spec.task_id] = lease
        lease.link.send(P.PushTask(
            spec.task_id, fn_id, blob, spec.name, spec.args, spec.deps, spec.return_ids,
            -1 if spec.streaming else len(spec.return_ids), spec.job_id, lease.gpu_ids,
            self.core.address, spec.shape, job_namespace(), spec.max_calls,
            spec.strategy if spec.strategy.get("kind") == "pg" else {}))

    def on_task_finished(self, msg: P.TaskFinished) -> bool:
        """A reply to one of our tasks? Then resolve its refs and return True."""
        lease = self._running.pop(msg.task_id, None)
        if lease is None:
            return False
        spec = lease.in_flight.pop(msg.task_id)
        q = lease.queue
        if lease.retiring and lease in q.leases:
            q.leases.remove(lease)  # its exit frees its resources: no ReturnLease
        if msg.error is not None:
            error = error_from_blob(msg.error)
            if spec.force_cancelled or spec.cancelled and isinstance(error, TaskCancelledError):
                self._fail_task(spec, TaskCancelledError(spec.name))
            elif self._retry_on(spec, error):
                spec.max_retries -= 1
                q.tasks.appendleft(spec)
                self._waiting[spec.task_id] = spec
            else:
                self._fail_task(spec, error)
        else:
            self._finish_task(spec, msg.results)
        self._pump(q)
        return True

    def worker_retires(self, task_id: bytes) -> None:
        """The worker running ``task_id`` exits after it (``max_calls``): use it no more."""
        lease = self._running.get(task_id)
        if lease is not None:
            lease.retiring = True

    def _retry_on(self, spec: TaskSpec, error: BaseException) -> bool:
        if spec.max_retries == 0 or spec.cancelled or not spec.retry_exceptions:
            return False
        if spec.retry_exceptions is True:
            return True
        cause = getattr(error, "cause", error)
        return isinstance(cause, spec.retry_exceptions or ())

    def _finish_task(self, spec: TaskSpec, results: list) -> None:
        self._release_deps(spec)
        self.core.ownership.finish_returns(spec.return_ids, results)
        self.core.streams.end(spec.task_id, None)
        if any(v[0] == "s" for v in results):
            # its results live in a node's store: if that node dies, running the task
            # again rebuilds them (kept while the results are referenced)
            for oid in spec.return_ids:
                self.lineage[oid] = spec

    def waiting_count(self) -> int:
        return len(self._waiting)

    def pending_events(self, now: float) -> list:
        """Task events for the tasks that started waiting here (for arguments, or for a
        worker) since the last call and wait still: each task at most once per state."""
        specs, self._unreported = self._unreported, []
        events = []
        for spec in specs:
            if spec.task_id in self._waiting:
                state = "PENDING_ARGS_AVAIL" if spec.dep_refs else "PENDING_NODE_ASSIGNMENT"
                events.append([spec.task_id, state, now, {
                    "name": spec.name, "job_id": spec.job_id, "type": "NORMAL_TASK"}])
        return events

    async def reconstruct(self, oid: bytes) -> bool:
        """Run again the task that made ``oid`` (whose stored copy was lost); True once
        its results are resolved again (or failed), False if there is no such task."""
        spec = self.lineage.get(oid)
        if spec is None:
            return False
        if spec.task_id not in self._waiting and spec.task_id not in self._running:
            log.warning("object %s was lost with its node; running %s again to rebuild it",
                        oid.hex(), spec.name)
            for rid in spec.return_ids:  # the results resolve anew
                entry = self.core.objects.entries.get(rid)
                if entry is not None and entry.state is ObjectState.READY and entry.location:
                    self.core.objects.reopen_for_rebuild(entry)
            spec.cancelled = spec.force_cancelled = False
            self._waiting[spec.task_id] = spec
            self._enqueue(spec)
        entry = self.core.objects.entries.get(oid)
        if entry is not None and not entry.ready:
            done: asyncio.Future[None] = self.core.loop.create_future()
            self.core.objects.when_ready(
                entry, lambda _e: None if done.done() else done.set_result(None))
            await done
        return True

    def _fail_task(self, spec: TaskSpec, error: BaseException | None) -> None:
        self._waiting.pop(spec.task_id, None)
        self._release_deps(spec)
        self.core.ownership.fail_returns(spec.return_ids, error)
        self.core.streams.end(spec.task_id, error)

    def _release_deps(self, spec: TaskSpec) -> None:
        held, spec.held_entries = spec.held_entries, []
        for entry in held:
            self.core.objects.release(entry)
        spec.dep_refs = []
        spec.held_refs = []

    def cancel_children(self, parent: bytes) -> None:
        """Cancel what a cancelled task submitted (and, through them, their children)."""
        specs = [s for s in self._waiting.values() if s.parent == parent]
        specs += [s for lease in self._running.values() for s in lease.in_flight.values()
                  if s.parent == parent]
        for spec in specs:
            self.cancel(spec.task_id, force=False, recursive=True)

    def cancel(self, task_id: bytes, force: bool, recursive: bool = True) -> bool:
        """Cancel a task this process submitted; False if it is not (or no longer) ours."""
        spec = self._waiting.get(task_id)
        if spec is not None:
            spec.cancelled = True
            for q in self._queues.values():
                if spec in q.tasks:
                    q.tasks.remove(spec)
            self._fail_task(spec, TaskCancelledError(spec.name))
            return True
        lease = self._running.get(task_id)
        if lease is None:
            return False  # finished already, or not ours
        spec = lease.in_flight[task_id]
        spec.cancelled = True
        if force:
            spec.force_cancelled = True
            if self.core.agent is not None:
                lease.agent.send_if_open(P.KillWorker(lease.worker_id))
        else:
            lease.link.send(P.CancelTask(task_id, recursive))
        return True

    def on_link_closed(self, link: Link) -> None:
        """Tasks running on a worker behind ``link`` are retried or fail."""
        for q in list(self._queues.values()):
            for lease in [le for le in q.leases if le.link is link]:
                q.leases.remove(lease)
                for spec in lease.in_flight.values():
                    self._running.pop(spec.task_id, None)
                    self._worker_lost(spec, q)
                lease.in_flight.clear()
                lease.agent.send_if_open(P.ReturnLease(lease.worker_id))
            self._pump(q)

    def _worker_lost(self, spec: TaskSpec, q: _ShapeQueue) -> None:
        if spec.cancelled:
            self._fail_task(spec, TaskCancelledError(spec.name, "its worker was stopped"))
        elif spec.max_retries != 0 and not spec.streaming:
            spec.max_retries -= 1
            log.info("worker running %s died; retrying (%s retries left)", spec.name,
                     "unlimited" if spec.max_retries < 0 else spec.max_retries)
            q.tasks.appendleft(spec)
            self._waiting[spec.task_id] = spec
        else:
            self._fail_task(spec, WorkerCrashedError(
                f"the worker running {spec.name} died unexpectedly and max_retries is used up; "
                "raise max_retries if the crash is transient, and see the worker logs in "
                f"{os.path.join(self.core.session_dir, 'logs')}"))

    def link_running(self, task_id: bytes) -> Link | None:
        """The link to the worker running ``task_id``, if it runs now."""
        lease = self._running.get(task_id)
        return lease.link if lease is not None else None

    def fail_queued(self, error: BaseException) -> None:
        """The node agent is gone: nothing queued can run any more."""
        for q in self._queues.values():
            while q.tasks:
                self._fail_task(q.tasks.popleft(), error)
