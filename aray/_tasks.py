"""Submitting tasks: dependencies, pushes to leased workers, replies and retries.

A task waits until its ObjectRef arguments are ready, then joins the queue of its resource
shape, where the process's :class:`~aray._leases.WorkerLeases` find it a leased worker; the
submitter pushes it there and resolves its refs from the reply. A worker that dies takes
its running tasks with it: they are retried (``max_retries``) or fail with
:class:`~aray.exceptions.WorkerCrashedError`. A task whose stored results were lost with
their node runs again (its lineage).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle

from . import _protocol as P
from ._leases import Lease, LeaseHost, WorkerLeases
from ._link import Link
from ._objects import INLINE_THRESHOLD, ObjectState
from ._refs import ArgSlot, ObjectRef, collect_refs
from ._runtime_context import job_namespace
from ._runtime_env import env_key
from ._signatures import checker, spec_of
from .exceptions import TaskCancelledError, WorkerCrashedError, error_from_blob
from .store._serialize import serialize

if TYPE_CHECKING:
    from ._objects import ObjectTable
    from ._ownership import Ownership
    from ._streams import Streams
    from ._task_events import TaskEventReporter

log = logging.getLogger("aray")


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


class SubmitHost(LeaseHost, Protocol):
    """What the task submitter needs of its process (:class:`~aray._core.Core`): what its
    :class:`~aray._leases.WorkerLeases` need, and the tables its tasks' results go to."""

    address: str  # the owner named in the results' refs
    session_dir: str
    objects: ObjectTable
    ownership: Ownership
    streams: Streams
    task_events: TaskEventReporter


class TaskSubmitter:
    """This process's submitted tasks, from ``f.remote()`` until their results arrive:
    their arguments, their push to a leased worker (its :attr:`leases` find the workers),
    their replies, retries and cancels, and the lineage that rebuilds lost results."""

    def __init__(self, core: SubmitHost) -> None:
        self.core = core
        self.leases = WorkerLeases(core, self._push, self._fail_task, self._worker_lost)
        self._running: dict[bytes, Lease] = {}  # task id -> lease running it
        self._waiting: dict[bytes, TaskSpec] = {}  # task id -> spec waiting for deps/lease
        self.lineage: dict[bytes, TaskSpec] = {}  # stored result id -> the task that made it
        self._unreported: list[TaskSpec] = []  # waiting tasks whose state the head lacks

    def accept(self, spec: TaskSpec) -> None:
        """Loop only (scheduled by ``Core.submit``): track ``spec`` until it has run."""
        for oid in spec.return_ids:
            self.core.objects.add(oid, owned=True)
        spec.job_id = spec.job_id or self.core.job_id
        self._waiting[spec.task_id] = spec
        self._unreported.append(spec)
        self.core.task_events.wake()
        if not spec.dep_refs:
            self.leases.enqueue(spec)
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
        self.leases.enqueue(spec)

    def _push(self, lease: Lease, spec: TaskSpec) -> None:
        """(Called by the leases' pump.) Send ``spec`` to the worker of ``lease``, with its
        function the first time that worker's link carries it."""
        self._waiting.pop(spec.task_id, None)
        sent = lease.link.state.setdefault("functions", set())
        fn_blob, fn_id = spec.function.blob_and_id()
        blob: bytes | None = None
        if fn_id not in sent:
            sent.add(fn_id)
            blob = fn_blob
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
        self.leases.answered(lease, msg.task_id)
        q = lease.queue
        if lease.retiring:
            self.leases.retired(lease)
        if msg.error is not None:
            error = error_from_blob(msg.error)
            if spec.force_cancelled or spec.cancelled and isinstance(error, TaskCancelledError):
                self._fail_task(spec, TaskCancelledError(spec.name))
            elif self._retry_on(spec, error):
                spec.max_retries -= 1
                self.leases.requeue(spec, q)
                self._waiting[spec.task_id] = spec
            else:
                self._fail_task(spec, error)
        else:
            self._finish_task(spec, msg.results)
        self.leases.pump(q)
        return True

    def _on_WorkerRetires(self, link: Link, msg: P.WorkerRetires) -> None:
        """The worker running ``msg.task_id`` exits after it (``max_calls``): use it no
        more."""
        lease = self._running.get(msg.task_id)
        if lease is not None:
            lease.retiring = True

    def _on_TaskTakenBack(self, link: Link, msg: P.TaskTakenBack) -> None:
        """A worker answered our TakeBackTask: if it gave the task back, the task waits
        for a worker again, first in its queue (an idle one asked for it)."""
        lease = self._running.get(msg.task_id)
        if lease is None:
            return  # answered meanwhile (the answer came first)
        self.leases.answered(lease, msg.task_id)
        if msg.taken:
            spec = lease.in_flight.pop(msg.task_id)
            del self._running[msg.task_id]
            if spec.cancelled:  # cancelled while it was being taken back
                self._fail_task(spec, TaskCancelledError(spec.name))
            else:
                self._waiting[spec.task_id] = spec
                self.leases.requeue(spec, lease.queue)
        self.leases.pump(lease.queue)

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
            self.leases.enqueue(spec)
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
            self.leases.unqueue(spec)
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
        self.leases.on_link_closed(link)

    def _worker_lost(self, spec: TaskSpec, ran: bool) -> bool:
        """(Called by the leases.) The worker ``spec`` was pushed to died: True if it runs
        again (the leases queue it first), False if it has failed. ``ran``: it may have
        started there (it costs a retry); otherwise it waited behind the one that had."""
        self._running.pop(spec.task_id, None)
        if not ran and not spec.cancelled:
            self._waiting[spec.task_id] = spec
            return True
        if spec.cancelled:
            self._fail_task(spec, TaskCancelledError(spec.name, "its worker was stopped"))
            return False
        if spec.max_retries != 0 and not spec.streaming:
            spec.max_retries -= 1
            log.info("worker running %s died; retrying (%s retries left)", spec.name,
                     "unlimited" if spec.max_retries < 0 else spec.max_retries)
            self._waiting[spec.task_id] = spec
            return True
        self._fail_task(spec, WorkerCrashedError(
            f"the worker running {spec.name} died unexpectedly and max_retries is used up; "
            "raise max_retries if the crash is transient, and see the worker logs in "
            f"{os.path.join(self.core.session_dir, 'logs')}"))
        return False

    def link_running(self, task_id: bytes) -> Link | None:
        """The link to the worker running ``task_id``, if it runs now."""
        lease = self._running.get(task_id)
        return lease.link if lease is not None else None

    def fail_queued(self, error: BaseException) -> None:
        """The node agent is gone: nothing queued can run any more."""
        self.leases.fail_queued(error)
