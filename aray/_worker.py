"""Worker processes: the task executor and the process main.

A worker runs one asyncio loop with its own :class:`~aray._core.Core` (so tasks can submit
tasks and own refs). Tasks pushed by callers run one at a time in arrival order: plain
functions on a dedicated thread, ``async def`` functions on the loop. An actor's calls run
on threads of its concurrency groups, an async actor's on an event loop per group (see
:mod:`aray._actor_groups`), never on the runtime's loop. Results at most
``INLINE_THRESHOLD`` bytes go back inline; larger ones are written to the node's store and only
their location travels.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import gc
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, cast

import cloudpickle

from . import _global, _thread_cancel
from . import _protocol as P
from . import actor as _actor_module  # noqa: F401  (aray.actor.exit_actor() in methods)
from ._actor_groups import GroupLoop, Lane, hosting_async_actor
from ._core import Core
from ._link import Link
from ._objects import INLINE_THRESHOLD
from ._portal import on_runtime
from ._refs import ArgSlot, collect_refs, return_id
from ._runtime_context import TaskContext, current_task
from ._streams import StreamWindow
from ._task_queue import Runner, TaskQueue
from ._tasks import load_function
from ._thread_cancel import ThreadCancelled, ThreadCancels
from .actor import ActorExit
from .exceptions import (
    ActorDiedError,
    AsyncioActorExit,
    RemoteErrorInfo,
    RuntimeEnvSetupError,
    TaskCancelledError,
)
from .store._serialize import deserialize, serialize

log = logging.getLogger("aray.worker")

#: an actor that ends itself waits this long for its last answers to leave
EXIT_FLUSH_TIMEOUT = 2.0
#: and this long for the head to end its process (then it exits by itself)
EXIT_TIMEOUT = 30.0
#: a plain task's answer waits at most this long for the next tasks' answers, while tasks
#: are queued behind it (a batch of small tasks then costs one wake-up of the loop)
ANSWER_BATCH_DELAY = 0.001


async def _drained(links) -> None:
    """Until ``links`` have sent what waits on them (or EXIT_FLUSH_TIMEOUT passed): a
    worker that exits by itself lets its last answers leave first."""
    deadline = time.monotonic() + EXIT_FLUSH_TIMEOUT
    while any(link.queued and not link.closed for link in links) and (
            time.monotonic() < deadline):
        await asyncio.sleep(0.01)


class _Executor:
    """What task and actor executors share: arguments in, results and errors out."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._marked = ""

    def _arguments(self, args_blob: bytes, deps: list) -> tuple[tuple, dict]:
        args, kwargs = deserialize(args_blob)
        if not deps:
            return args, kwargs
        values = [self.core.fetcher.value_of_resolved(oid, value) for oid, value in deps]

        def fill(v):
            return values[v.index] if isinstance(v, ArgSlot) else v

        return tuple(fill(a) for a in args), {k: fill(v) for k, v in kwargs.items()}

    def _resolved(self, oid: bytes, value: Any) -> list:
        """A result as a resolved value: inline, or written to the store (on this thread)."""
        return self._stored(oid, *self._serialized(value))

    async def _resolved_async(self, oid: bytes, value: Any) -> list:
        """On the loop: the same, with a large value written to the store in a thread, so
        the loop (an async actor's other calls) does not wait for the copy."""
        ser, contained = self._serialized(value)
        if ser.total_size > INLINE_THRESHOLD:
            return await asyncio.to_thread(self._stored, oid, ser, contained)
        return self._stored(oid, ser, contained)

    def _serialized(self, value: Any) -> tuple:
        try:
            return collect_refs(serialize, value)
        except Exception as exc:
            task = current_task.get()
            raise TypeError(
                f"{task.name if task else 'the task'} returned a {type(value).__name__}, which "
                f"cannot be pickled ({exc}); return something picklable instead") from exc

    def _stored(self, oid: bytes, ser, contained: list) -> list:
        task = current_task.get()
        if ser.total_size > INLINE_THRESHOLD:
            resolved = self.core.ownership.store_value(oid, ser, task.owner if task else "")
        else:
            resolved = ["v", ser.to_bytes()]
        if contained:
            # the caller will hold these refs; count it as a holder before we report, so
            # nobody frees them in between (the refs stay alive until the call runs)
            self.core.call_soon(self._register_refs, contained)
            resolved.append([[r._id, r._owner] for r in contained])
        return resolved

    def _register_refs(self, refs: list) -> None:
        for ref in refs:
            self.core.borrowers.hold_at_owner(ref._id, ref._owner)

    def _started(self, task_id: bytes, name: str, job_id: str, kind: str) -> None:
        self.core.task_events.started(task_id, name, job_id, kind)

    def _reply(self, link: Link, msg) -> None:
        """Loop only: send a result once the registrations it depends on are answered."""
        if isinstance(msg, P.TaskFinished) and msg.error is None:
            self.core.task_events.ended(msg.task_id)
        borrowers = self.core.borrowers
        if borrowers.unacked == 0:
            link.send_if_open(msg)
        else:
            borrowers.after_registrations(lambda: link.send_if_open(msg))

    def _pack(self, name: str, return_ids: list, num_returns: int, result: Any) -> list:
        """The resolved values of a call's result (``num_returns`` of them)."""
        values = self._values(name, num_returns, result)
        return [self._resolved(oid, value) for oid, value in zip(return_ids, values)]

    async def _pack_async(self, name: str, return_ids: list, num_returns: int,
                          result: Any) -> list:
        """On the loop: :meth:`_pack`, large values written in a thread."""
        values = self._values(name, num_returns, result)
        return [await self._resolved_async(oid, value)
                for oid, value in zip(return_ids, values)]

    def _values(self, name: str, num_returns: int, result: Any) -> list:
        n = num_returns
        if n == 1 and not inspect.isgenerator(result):
            values = [result]
        elif n == 0:
            values = []
        else:
            try:
                values = list(result)
            except TypeError:
                raise ValueError(
                    f"{name} has num_returns={n} but returned a {type(result).__name__}, "
                    f"not a sequence of {n} values") from None
            if len(values) != n:
                raise ValueError(f"{name} has num_returns={n} but returned {len(values)} values")
        return values

    def _post_item(self, link: Link, msg: Any) -> None:
        """Any thread: send a stream's item, after what this thread sent before."""
        self.core.call_soon(self._reply, link, msg)

    def _stream_sync(self, link: Link, task_id: bytes, result: Any, on_loop: bool = False,
                     stop: Callable[[], bool] | None = None) -> None:
        """Send each value a generator yields as it comes (runs on the task's thread, or
        ``on_loop``: a sync generator on an event loop, which cannot wait for its consumer
        without stopping the loop). ``stop()`` true after an item: the call was cancelled,
        and ends there (an actor's calls are not interrupted, but a yield is a safe stop)."""
        window = self._open_window(link, task_id)
        try:
            for index, value in enumerate(_iterate(result)):
                item = P.StreamItem(task_id, index,
                                    self._resolved(return_id(task_id, index), value))
                self._post_item(link, item)
                if stop is not None and stop():
                    raise ThreadCancelled()
                if not on_loop:
                    window.wait_sync(index + 1)
        finally:
            self.core.streams.windows.pop(task_id, None)

    async def _stream_async(self, link: Link, task_id: bytes, result: Any) -> None:
        if not inspect.isasyncgen(result):
            self._stream_sync(link, task_id, result, on_loop=True)
            return
        window = self._open_window(link, task_id)
        index = 0
        try:
            async for value in result:
                self._post_item(link, P.StreamItem(
                    task_id, index, await self._resolved_async(return_id(task_id, index), value)))
                index += 1
                await window.wait_async(index)
        finally:
            self.core.streams.windows.pop(task_id, None)

    def _open_window(self, link: Link, task_id: bytes) -> StreamWindow:
        window = self.core.streams.windows[task_id] = StreamWindow(link)
        return window

    def _error_blob(self, name: str, exc: BaseException, task_id: bytes = b"") -> bytes:
        tb = exc.__traceback__
        # drop the runtime's own frames (executor, thread pool, asyncio) from the top
        while tb is not None and _is_runtime_frame(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        info = RemoteErrorInfo(exc, type(exc).__name__, str(exc), text, name,
                               self.core.node_id, os.getpid())
        if task_id:
            self.core.task_events.ended(task_id, f"{type(exc).__name__}: {exc}")
        try:
            return cloudpickle.dumps(info)
        except Exception:
            info.cause = None
            return cloudpickle.dumps(info)

    def _send_error(self, link: Link, task_id: bytes, name: str, exc: BaseException) -> None:
        self._reply(link, P.TaskFinished(task_id, [], self._error_blob(name, exc, task_id)))

    def _mark(self, job_id: str, name: str) -> None:
        """Tell the node agent's log reader which task the following output belongs to."""
        marker = f"{job_id}::{name}"
        if marker != self._marked:
            self._marked = marker
            line = f"{P.TASK_MARKER}{marker}\n"
            sys.stdout.write(line)
            sys.stdout.flush()
            sys.stderr.write(line)
            sys.stderr.flush()


_CUDA_AT_START = os.environ.get("CUDA_VISIBLE_DEVICES")


def set_visible_gpus(gpu_ids: list) -> None:
    """Show a task only the GPUs it was given; a task without GPUs sees what the worker
    started with (nothing left over from the previous task)."""
    if gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    elif _CUDA_AT_START is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = _CUDA_AT_START


#: the variables that size the thread pools of numerical libraries (OpenMP, OpenBLAS, MKL,
#: Apple's Accelerate, numexpr). A worker sets them to its task's or actor's CPUs, as Ray
#: does: otherwise each of N parallel workers starts one thread per core, and N numpy tasks
#: run slower together than one after another. A variable set when aray started is kept.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                          "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_THREADS_SET_BY_USER = frozenset(v for v in THREAD_COUNT_VARIABLES if v in os.environ)
_threads_set = ""  # the count set last, in this worker


def set_thread_counts(resources: dict) -> None:
    """Size numerical libraries' thread pools for the CPUs a task or actor holds (at least
    one thread), before its code runs. A library reads them when it is loaded, so a worker
    that loaded it for an earlier task keeps that task's count."""
    global _threads_set
    threads = str(max(1, int(resources.get("CPU") or 0)))
    if threads == _threads_set:
        return  # as for the previous task (putenv costs a few microseconds per variable)
    _threads_set = threads
    for variable in THREAD_COUNT_VARIABLES:
        if variable not in _THREADS_SET_BY_USER:
            os.environ[variable] = threads


def _iterate(result: Any):
    try:
        return iter(result)
    except TypeError:
        raise TypeError(f"a streaming task must return an iterable (use yield), not a "
                        f"{type(result).__name__}") from None


class TaskExecutor(_Executor):
    """Runs the tasks pushed to this worker, one at a time, and reports their results.

    Plain functions run on the worker's task thread, ``async def`` ones on the loop; the
    runner that holds the queue runs the tasks of its kind back to back (see
    :mod:`aray._task_queue`), and the loop sends the answers."""

    def __init__(self, core: Core) -> None:
        super().__init__(core)
        self.functions: dict[bytes, Any] = {}
        self._kinds: dict[bytes, Runner] = {}  # which runner runs each function's tasks
        self.tasks: TaskQueue[tuple[Link, P.PushTask]] = TaskQueue()
        self.thread = Lane(1, "aray-task")  # one thread: the plain tasks, in order
        self._running_task: asyncio.Task | None = None  # the async task running, if any
        self.cancels = ThreadCancels()  # of the sync task on the task thread
        self._cancelled = b""  # the running task, once it was cancelled (is_canceled())
        self.actor: ActorExecutor | None = None  # the actor this worker hosts, once created
        self.calls: dict[bytes, int] = {}  # calls run per function (for max_calls)
        self.retiring = False  # max_calls reached: the worker exits after the running task
        self._answers: list[tuple[Link, Any]] = []  # posted by the task thread, not yet sent
        self._answers_lock = threading.Lock()

    # --- messages (the worker's core dispatches them here) -------------------------------
    def _on_PushTask(self, link: Link, msg: P.PushTask) -> None:
        if msg.fn_blob is not None and msg.fn_id not in self.functions:
            self.functions[msg.fn_id] = msg.fn_blob
        self._start(self.tasks.push((link, msg), self._runner_for(msg.fn_id)))

    def _runner_for(self, fn_id: bytes) -> Runner:
        """Loop: the runner of this function's tasks (the loop for ``async def`` ones)."""
        kind = self._kinds.get(fn_id)
        if kind is None:
            try:
                fn = self._function(fn_id)
            except Exception:
                return "thread"  # it fails again there, and that failure is the answer
            is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
            kind = self._kinds[fn_id] = "loop" if is_async else "thread"
        return kind

    def _start(self, runner: Runner | None) -> None:
        """Loop: start the runner that now holds the task queue."""
        if runner == "thread":
            self.thread.put(self._run_on_thread)
        elif runner == "loop":
            self.core.spawn(self._run_on_loop(), name="executor")

    def cancel(self, task_id: bytes) -> None:
        for link, msg in self.tasks.remove(lambda item: item[1].task_id == task_id):
            self._send_error(link, task_id, msg.name, TaskCancelledError(msg.name))
            return
        running = self.tasks.running
        if running is None or running[1].task_id != task_id:
            return
        self._cancelled = task_id
        if self._running_task is not None:
            self._running_task.cancel()
        else:  # a sync task: on its thread now, or about to be
            self.cancels.cancel(task_id, queued=True)

    def _on_TakeBackTask(self, link: Link, msg: P.TakeBackTask) -> None:
        """The caller wants a queued task back (it has a free worker for it)."""
        taken = self.tasks.remove(lambda item: item[1].task_id == msg.task_id)
        link.send_if_open(P.TaskTakenBack(msg.task_id, bool(taken)))

    def _on_CancelTask(self, link: Link, msg: P.CancelTask) -> None:
        (self.actor or self).cancel(msg.task_id)
        if msg.recursive:
            self.core.tasks.cancel_children(msg.task_id)

    def _on_AssignJob(self, link: Link, msg: P.AssignJob) -> None:
        self.core.job_id = msg.job_id
        for path in msg.code_paths:  # the job's own modules, where its driver has them
            if path not in sys.path:
                sys.path.append(path)
        if not msg.runtime_env:
            link.send(P.JobAssigned(msg.req_id, ""))
            return
        self.core.spawn(self._set_up_env(link, msg), name="runtime env setup")

    async def _set_up_env(self, link: Link, msg: P.AssignJob) -> None:
        """Set up the pool's runtime env (off the loop: downloads, pip), then answer."""
        error = ""
        try:
            await asyncio.to_thread(self.core.runtime_envs.set_up, msg.runtime_env)
        except Exception as exc:  # reported to the caller as RuntimeEnvSetupError
            error = str(exc) if isinstance(exc, RuntimeEnvSetupError) else (
                f"{type(exc).__name__}: {exc}")
            log.warning("runtime env %s could not be set up: %s", msg.runtime_env, error)
        link.send(P.JobAssigned(msg.req_id, error))

    def cancel_requested(self, task: TaskContext) -> bool:
        """Any thread: was the running task, or actor call, ``task`` cancelled? (what
        ``get_runtime_context().is_canceled()`` answers)"""
        if task.actor_id:
            return self.actor is not None and self.actor.cancel_requested(task.task_id)
        return task.task_id != b"" and self._cancelled == task.task_id

    def caller_gone(self, link: Link) -> None:
        """Drop queued tasks of a caller whose link closed: nobody waits for them."""
        self.tasks.remove(lambda item: item[0] is link)

    # --- running: the two runners, and what they share ------------------------------------
    def _run_on_thread(self) -> None:
        """The task thread: run plain tasks while the queue's head is one."""
        while (item := self.tasks.take("thread")) is not None:
            ctx = self._begin(*item)
            try:
                self._execute_sync(*item, ctx)
            finally:
                self._end(item[1])
        if self._answers:
            self.core.call_soon(self._send_answers)  # the next task runs on the loop
        if self.tasks.handed_to is not None:
            self.core.call_soon(self._start, self.tasks.handed_to)

    async def _run_on_loop(self) -> None:
        """The loop: run ``async def`` tasks while the queue's head is one."""
        while (item := self.tasks.take("loop")) is not None:
            ctx = self._begin(*item)
            try:
                await self._execute_async(*item, ctx)
            finally:
                self._end(item[1])
        self._start(self.tasks.handed_to)

    def _begin(self, link: Link, msg: P.PushTask) -> TaskContext:
        """Either runner, on its thread: what comes before a task's code; its context."""
        if msg.max_calls:
            self._count_call(link, msg)
        ctx = TaskContext(msg.task_id, msg.job_id, msg.name, list(msg.gpu_ids), owner=msg.owner,
                          resources=msg.resources, namespace=msg.namespace,
                          placement_group=msg.placement_group)
        self._started(msg.task_id, msg.name, msg.job_id, "NORMAL_TASK")
        set_visible_gpus(msg.gpu_ids)
        set_thread_counts(msg.resources)
        self.core.job_id = msg.job_id  # a worker serves one job
        return ctx

    def _end(self, msg: P.PushTask) -> None:
        """Either runner: the task is over; a worker at its ``max_calls`` retires now."""
        self._running_task = None
        self._cancelled = b""
        self.cancels.forget(msg.task_id)
        _flush_std()
        if self.retiring:
            self.tasks.close()  # what is queued never runs: the owner sends it elsewhere
            self.core.call_soon(self._send_answers)
            self.core.call_soon(self.core.spawn, self._retire(), "retire")

    def _count_call(self, link: Link, msg: P.PushTask) -> None:
        """One more call of its function: at ``max_calls``, tell the caller (before the
        answer) that this worker exits after it, as Ray recycles such a worker."""
        count = self.calls[msg.fn_id] = self.calls.get(msg.fn_id, 0) + 1
        if count >= msg.max_calls:
            self.retiring = True
            self._answer(link, P.WorkerRetires(msg.task_id))

    async def _retire(self) -> None:
        """Exit once the last answers have left; the node agent sees the exit and frees
        the lease's resources (what the function left behind goes with the process)."""
        await _drained(self.core.links.accepted())
        _flush_std()
        os._exit(0)

    def _execute_sync(self, link: Link, msg: P.PushTask, ctx: TaskContext) -> None:
        """On the task thread: one plain task (cancellable), then its answer, posted."""
        token = current_task.set(ctx)
        try:
            fn = self._function(msg.fn_id)
            result = self.cancels.run(msg.task_id, self._call_user, fn, link, msg)
            results = [] if msg.num_returns < 0 else self._pack(
                msg.name, msg.return_ids, msg.num_returns, result)
            reply = P.TaskFinished(msg.task_id, results, None)
        except BaseException as exc:  # user code raised (or the task was cancelled)
            if isinstance(exc, SystemExit):
                self.core.call_soon(self._exit_for, msg.name, exc)
                return  # no answer: the owner sees a worker that ended
            reply = P.TaskFinished(msg.task_id, [], self._error_blob(
                msg.name, _cancel_named(exc, msg.name), msg.task_id))
        finally:
            current_task.reset(token)
        self._answer(link, reply)

    def _answer(self, link: Link, msg: Any) -> None:
        """Either runner: send ``msg`` (in order with the answers before it). On the task
        thread, while more tasks wait, it waits up to ANSWER_BATCH_DELAY for their answers,
        so that a pipelined batch wakes the loop, and goes out in a frame, once per batch."""
        if self.core.objects.on_loop_thread():
            self._send_answers()
            self._reply(link, msg)
            return
        with self._answers_lock:
            self._answers.append((link, msg))
            first = len(self._answers) == 1
        if not len(self.tasks):
            self.core.call_soon(self._send_answers)  # nothing waits: no reason to wait
        elif first:
            self.core.call_soon(self.core.loop.call_later, ANSWER_BATCH_DELAY,
                                self._send_answers)

    def _send_answers(self) -> None:
        """Loop: send what the task thread answered so far."""
        with self._answers_lock:
            answers, self._answers = self._answers, []
        for link, msg in answers:
            self._reply(link, msg)

    async def _execute_async(self, link: Link, msg: P.PushTask, ctx: TaskContext) -> None:
        """On the loop: one ``async def`` task, then its answer."""
        token = current_task.set(ctx)
        try:
            fn = self._function(msg.fn_id)
            await self.core.fetcher.fetch_values(msg.deps)  # on the loop: pull before reading
            args, kwargs = self._arguments(msg.args, msg.deps)
            self._mark(msg.job_id, msg.name)
            if msg.num_returns < 0:
                self._running_task = self.core.loop.create_task(_exit_caught(
                    self._stream_async(link, msg.task_id, fn(*args, **kwargs))))
                await self._running_task
                results = []
            else:
                self._running_task = self.core.loop.create_task(
                    _exit_caught(fn(*args, **kwargs)))
                result = await self._running_task
                results = await self._pack_async(msg.name, msg.return_ids, msg.num_returns,
                                                 result)
        except BaseException as exc:  # user code raised (or the task was cancelled)
            if isinstance(exc, asyncio.CancelledError):
                this = asyncio.current_task()
                if self.core.loop.is_closed() or this is not None and this.cancelling():
                    raise  # the executor itself is stopped (worker shutdown), not the task
            if isinstance(exc, (SystemExit, UserExit)):
                self._exit_for(msg.name, exc)  # no answer: the owner sees a worker that ended
                return
            self._send_error(link, msg.task_id, msg.name, _cancel_named(exc, msg.name))
            return
        finally:
            current_task.reset(token)
        self._reply(link, P.TaskFinished(msg.task_id, results, None))

    def _exit_for(self, name: str, exc: BaseException) -> None:
        """The task ``name`` called ``exit()``/``sys.exit()``: as in Ray, that ends the
        worker, so its owner sees a worker that ended (``WorkerCrashedError``, or a retry
        under ``max_retries``), not an error raised by the task. ``atexit`` handlers run."""
        self._send_answers()  # the earlier tasks' answers leave before the process ends
        self.tasks.close()  # the tasks queued here start nowhere: their owner sends them on
        code = (exc.exit if isinstance(exc, UserExit) else cast(SystemExit, exc)).code
        print(f"aray: {name}() raised SystemExit({code!r}): its worker process exits",
              file=sys.stderr)
        self.core.spawn(_exit_process(), name="task exit")

    def _call_user(self, fn, link: Link, msg: P.PushTask) -> Any:
        args, kwargs = self._arguments(msg.args, msg.deps)
        self._mark(msg.job_id, msg.name)
        result = fn(*args, **kwargs)
        if msg.num_returns < 0:  # the generator runs (and is cancelled) here
            self._stream_sync(link, msg.task_id, result)
        return result

    # --- actors: a worker that receives CreateActor hosts that actor for life -------------
    def _on_CreateActor(self, link: Link, msg: P.CreateActor) -> None:
        self.actor = ActorExecutor(self.core, msg.actor_id, msg.spec)
        self.core.spawn(self.actor.start(link), name="actor constructor")

    def _on_CallActor(self, link: Link, msg: P.CallActor) -> None:
        actor = self.actor
        if actor is None or actor.actor_id != msg.actor_id:
            self._send_error(link, msg.task_id, msg.method, ActorDiedError(
                f"actor {msg.actor_id} does not live in this worker (any more)"))
        else:
            actor.call(link, msg)

    def _function(self, fn_id: bytes):
        fn = self.functions.get(fn_id)
        if fn is None:
            raise RuntimeError("the function of this task never reached the worker")
        if isinstance(fn, bytes):
            fn = self.functions[fn_id] = load_function(fn)
        return fn


class ActorExecutor(_Executor):
    """Hosts one actor instance and runs calls on it.

    * async actors (an ``async def`` method or constructor): each concurrency group, the
      default one too, runs its calls as asyncio tasks on an event loop of its own, on a
      thread of its own (:class:`~aray._actor_groups.GroupLoop`), at most its limit at once;
    * sync and threaded actors: each group has threads of its own, as many as its limit
      (:class:`~aray._actor_groups.Lane`); a plain actor runs one call at a time, in order.

    The runtime's loop only hands calls over and sends the answers, in the order the calls
    produce them (through the loop's :class:`~aray._inbox.Inbox`). The actor ends itself with
    ``exit_actor()`` or ``__ray_terminate__`` (:meth:`_end`).
    """

    def __init__(self, core: Core, actor_id: str, spec: dict) -> None:
        super().__init__(core)
        self.actor_id = actor_id
        self.spec = spec
        self.class_name = spec["class_name"]
        self.job_id = spec["job_id"]
        self.gpu_ids = list(spec.get("gpu_ids") or [])
        core.job_id = self.job_id
        self.is_async = spec["is_async"]
        self.method_groups: dict[str, str] = spec.get("method_groups") or {}
        self.limits = {"": spec["max_concurrency"], **(spec.get("concurrency_groups") or {})}
        self.loops: dict[str, GroupLoop] = {}  # an async actor's groups (made by start)
        self.lanes: dict[str, Lane] = {}  # a sync actor's groups (made by start)
        self.cancels = ThreadCancels(interrupt=False)  # sync calls: marked, not interrupted
        #: (loop) the calls received and not answered yet: task id -> (caller, group)
        self.unfinished: dict[bytes, tuple[Link, str]] = {}
        self._answered = asyncio.Event()  # set (loop) whenever a call is answered
        self.ending = ""  # why the actor ends, once it does: calls made later fail with it
        self._ended = False  # the calls were failed, the process is on its way out
        self.instance: Any = None
        set_visible_gpus(self.gpu_ids)
        set_thread_counts(spec.get("hold") or {})

    def _context(self, task_id: bytes, name: str, owner: str = "") -> TaskContext:
        return TaskContext(task_id, self.job_id, name, self.gpu_ids, self.actor_id, owner,
                           actor=self.spec)  # what get_runtime_context() tells of the actor

    async def start(self, agent: Link) -> None:
        name = f"{self.class_name}.__init__"
        error = None
        try:
            cls = load_function(self.spec["class_blob"])
            # an async constructor makes an async actor, whatever its methods are
            self.is_async = self.is_async or inspect.iscoroutinefunction(
                getattr(cls, "__init__", None))
            self._make_groups()
            await self.core.fetcher.fetch_values(self.spec["deps"])
            if self.is_async:  # on the default group's loop: what it makes belongs there
                self.instance = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                    self._construct_async(cls, name), self.loops[""].loop))
            else:  # on the default group's thread: a plain actor's calls run there too
                made: concurrent.futures.Future = concurrent.futures.Future()
                self.lanes[""].put(functools.partial(self._construct, cls, name, made))
                self.instance = await asyncio.wrap_future(made)
        except BaseException as exc:
            error = self._error_blob(name, exc)
        finally:
            _flush_std()
        core = self.core
        agent.send_if_open(P.ActorStarted(self.actor_id, core.worker_id, core.address,
                                            os.getpid(), core.node_id, error))

    def _make_groups(self) -> None:
        if self.is_async:
            hosting_async_actor()
            self.loops = {g: GroupLoop(f"aray-actor-{g or 'main'}", n)
                          for g, n in self.limits.items()}
        else:
            self.lanes = {g: Lane(n, f"aray-actor-{g or 'main'}")
                          for g, n in self.limits.items()}

    def _construct(self, cls, name: str, made: concurrent.futures.Future) -> None:
        """On the default group's thread (the one a plain actor's calls run on, as in Ray:
        what needs the thread that made it, such as an sqlite connection, works)."""
        token = current_task.set(self._context(b"", name))
        try:
            args, kwargs = self._arguments(self.spec["args"], self.spec["deps"])
            self._mark(self.job_id, self.class_name)
            made.set_result(cls(*args, **kwargs))
        except BaseException as exc:  # the constructor's error goes to its caller
            made.set_exception(exc)
        finally:
            current_task.reset(token)

    async def _construct_async(self, cls, name: str):
        current_task.set(self._context(b"", name))
        args, kwargs = self._arguments(self.spec["args"], self.spec["deps"])
        self._mark(self.job_id, self.class_name)
        if not inspect.iscoroutinefunction(getattr(cls, "__init__", None)):
            return cls(*args, **kwargs)
        # cls(...) would refuse the coroutine an async __init__ returns: make the instance
        # as type.__call__ does, then await its __init__ (Ray refuses async constructors)
        if cls.__new__ is object.__new__:
            instance = object.__new__(cls)
        else:
            instance = cls.__new__(cls, *args, **kwargs)
        await instance.__init__(*args, **kwargs)
        return instance

    def _method(self, name: str) -> Callable[..., Any]:
        if name == "__ray_ready__":  # every actor has it, as in Ray: calls run once it is up
            return _ready
        return getattr(self.instance, name)

    def _call_name(self, msg: P.CallActor) -> str:
        """The name a call goes by (state API, errors): ``Class.method`` unless the caller
        named it with ``.options(name=...)``."""
        return msg.name or f"{self.class_name}.{msg.method}"

    # --- calls, on the runtime's loop -----------------------------------------------------
    def call(self, link: Link, msg: P.CallActor) -> None:
        """Loop only: run one call in its concurrency group."""
        name = self._call_name(msg)
        group = msg.group or self.method_groups.get(msg.method, "")
        runners: dict = self.loops if self.is_async else self.lanes
        if self.ending or group not in runners:
            error = ActorDiedError(self.ending) if self.ending else ValueError(
                f"{name}: the actor has no concurrency group {group!r}")
            self._reply(link, P.TaskFinished(msg.task_id, [],
                                             self._error_blob(name, error, msg.task_id)))
            return
        self.unfinished[msg.task_id] = (link, group)
        if msg.method == "__ray_terminate__":
            # refused from now on, even the calls that arrived in the same frame
            self.ending = (f"The actor {self.class_name} ({self.actor_id}) is dead: "
                           "__ray_terminate__() was called.")
            self.core.spawn(self._terminate(msg.task_id), name="actor terminate")
        elif self.is_async:
            self.loops[group].start(msg.task_id,
                                    functools.partial(self._call_async, link, msg, group),
                                    functools.partial(self._never_ran, link, msg))
        else:  # queued now, in arrival order: a one-thread lane runs them in that order
            self.lanes[group].put(functools.partial(self._run_call, link, msg))

    def cancel(self, task_id: bytes) -> None:
        """Loop only: a queued call will not run; a running call of an async actor is
        cancelled at its ``await``; a running sync call is only marked, as in Ray (an actor
        has state: see ``is_canceled``), and reported cancelled when it returns."""
        entry = self.unfinished.get(task_id)
        if entry is None:
            return
        if self.is_async:
            self.loops[entry[1]].cancel(task_id)
        else:
            self.cancels.cancel(task_id, queued=True)

    def cancel_requested(self, task_id: bytes) -> bool:
        """Any thread: was the running sync call ``task_id`` cancelled?"""
        if self.is_async:
            raise RuntimeError(
                "This method is not supported in an async actor. There aray.cancel() raises "
                "asyncio.CancelledError in the method at its current await: catch it (and "
                "re-raise) to clean up, instead of calling is_canceled().")
        return self.cancels.requested(task_id)

    def _deliver(self, link: Link, msg: Any) -> None:
        """Loop only (the reply queue's sender): answer a call, unless it was answered
        already (the actor ended meanwhile)."""
        if msg.task_id not in self.unfinished:
            return
        if isinstance(msg, P.TaskFinished):
            del self.unfinished[msg.task_id]
            self.cancels.forget(msg.task_id)
            self._answered.set()
        self._reply(link, msg)

    def _post_item(self, link: Link, msg: Any) -> None:
        """Any thread: answer on the runtime's loop, after the answers posted before."""
        self.core.objects.inbox.post(self._deliver, link, msg)

    # --- sync calls, on a lane's thread ---------------------------------------------------
    def _run_call(self, link: Link, msg: P.CallActor) -> None:
        """On a lane thread: run one call and post its answer."""
        if self._ended:
            return  # the actor ended after this call was queued: it is answered already
        name = self._call_name(msg)
        try:
            reply = P.TaskFinished(msg.task_id, self._call_sync(link, msg), None)
        except BaseException as exc:
            if _ends_actor(exc):
                self._ended_by(name, exc)
                return
            reply = P.TaskFinished(msg.task_id, [], self._error_blob(
                name, _cancel_named(exc, name), msg.task_id))
        finally:
            _flush_std()
        self._post_item(link, reply)

    def _call_sync(self, link: Link, msg: P.CallActor) -> list:
        name = self._call_name(msg)
        current_task.set(self._context(msg.task_id, name, msg.owner))
        self._started(msg.task_id, name, self.job_id, "ACTOR_TASK")
        result = self.cancels.run(msg.task_id, self._call_user, link, msg)
        if msg.num_returns < 0:
            return []
        return self._pack(msg.method, msg.return_ids, msg.num_returns, result)

    def _call_user(self, link: Link, msg: P.CallActor) -> Any:
        args, kwargs = self._arguments(msg.args, msg.deps)
        self._mark(self.job_id, self.class_name)
        result = self._method(msg.method)(*args, **kwargs)
        if msg.num_returns < 0:  # the generator runs here, and stops at a yield if cancelled
            self._stream_sync(link, msg.task_id, result,
                              stop=functools.partial(self.cancels.requested, msg.task_id))
        return result

    # --- async calls, on their group's loop -----------------------------------------------
    async def _call_async(self, link: Link, msg: P.CallActor, group: str) -> None:
        name = self._call_name(msg)
        token = current_task.set(self._context(msg.task_id, name, msg.owner))
        self._started(msg.task_id, name, self.job_id, "ACTOR_TASK")
        try:
            async with self.loops[group].semaphore:
                if msg.deps:  # the runtime's loop pulls the arguments of other nodes
                    await on_runtime(self.core.loop, self.core.fetcher.fetch_values(msg.deps))
                args, kwargs = self._arguments(msg.args, msg.deps)
                self._mark(self.job_id, self.class_name)
                result = self._method(msg.method)(*args, **kwargs)
                if msg.num_returns < 0:
                    await self._stream_async(link, msg.task_id, result)
                    results: list = []
                else:
                    if inspect.isawaitable(result):
                        result = await result
                    results = await self._pack_async(msg.method, msg.return_ids,
                                                     msg.num_returns, result)
        except BaseException as exc:
            if _ends_actor(exc):
                self._ended_by(name, exc)
            else:
                self._post_item(link, P.TaskFinished(msg.task_id, [], self._error_blob(
                    name, _cancel_named(exc, name), msg.task_id)))
            return
        finally:
            current_task.reset(token)
            _flush_std()
        self._post_item(link, P.TaskFinished(msg.task_id, results, None))

    def _never_ran(self, link: Link, msg: P.CallActor) -> None:
        """A call cancelled before its coroutine started: it answers here."""
        name = self._call_name(msg)
        self._post_item(link, P.TaskFinished(msg.task_id, [], self._error_blob(
            name, TaskCancelledError(name), msg.task_id)))

    # --- the actor ends itself ------------------------------------------------------------
    def _ended_by(self, name: str, exc: BaseException) -> None:
        """Any thread: the call ``name`` ended the actor (``exit_actor()``, ``sys.exit()``)."""
        if isinstance(exc, (ActorExit, AsyncioActorExit)):
            why = f"{name}() called exit_actor()"
        else:
            why = f"{name}() raised SystemExit"
        # after the answers of the calls that finished before it
        self.core.objects.inbox.post(self._end, why)

    async def _terminate(self, task_id: bytes) -> None:
        """``__ray_terminate__``: end the actor once the calls received before this one
        have been answered; the calls made after it fail."""
        why = "__ray_terminate__() was called"
        earlier = [t for t in self.unfinished if t != task_id]
        while any(t in self.unfinished for t in earlier):
            self._answered.clear()
            await self._answered.wait()
        self._end(why)

    def _end(self, why: str) -> None:
        """Loop only: the actor ends itself. Every call not answered yet fails with
        ActorDiedError, the one that ended it too (as in Ray); then the process runs its
        ``atexit`` handlers and the head marks the actor dead, not to be restarted."""
        if self._ended:
            return
        self._ended = True
        self.ending = self.ending or (
            f"The actor {self.class_name} ({self.actor_id}) is dead: it exited: {why}.")
        error = ActorDiedError(self.ending)
        callers = set()
        for task_id, (link, _group) in list(self.unfinished.items()):
            self._reply(link, P.TaskFinished(task_id, [], self._error_blob(
                self.class_name, error, task_id)))
            callers.add(link)
        self.unfinished.clear()
        self.core.spawn(self._exit_process(callers), name="actor exit")

    async def _exit_process(self, callers: set) -> None:
        await _drained(callers)  # the answers leave before the process does
        await _run_exit_handlers()
        try:
            head = await self.core.head_link()
            # the head marks the actor dead for good and has its node end this process
            await head.request(lambda r: P.KillActor(r, self.actor_id, True),
                               timeout=EXIT_TIMEOUT)
        except Exception as exc:
            log.warning("actor %s: the head did not end it (%s); exiting", self.actor_id, exc)
        os._exit(0)


def _ready() -> bool:
    return True


class UserExit(Exception):
    """``SystemExit`` raised by user code in an asyncio task, carried out as an ordinary
    exception: asyncio lets a task's SystemExit escape the event loop itself."""

    def __init__(self, exit: SystemExit) -> None:
        super().__init__(exit.code)
        self.exit = exit


async def _exit_caught(coro: Any) -> Any:
    try:
        return await coro
    except SystemExit as exc:
        raise UserExit(exc) from None


async def _run_exit_handlers() -> None:
    """What an interpreter that exits runs: the user's ``atexit`` handlers (off the loop)."""
    _flush_std()
    try:
        await asyncio.to_thread(atexit._run_exitfuncs)
    finally:
        _flush_std()


async def _exit_process() -> None:
    """End this worker as an interpreter that exits would: ``atexit`` handlers first."""
    await _run_exit_handlers()
    os._exit(0)


def _ends_actor(exc: BaseException) -> bool:
    """Does this exception, raised by a method, end the actor? (exit_actor(), sys.exit())"""
    return isinstance(exc, (SystemExit, AsyncioActorExit))


def _cancel_named(exc: BaseException, name: str) -> BaseException:
    """The error to report for ``exc``: a cancel (of the loop's task, or raised in the
    call's thread) becomes TaskCancelledError naming the call."""
    if isinstance(exc, (asyncio.CancelledError, ThreadCancelled)):
        return TaskCancelledError(name).with_traceback(exc.__traceback__)
    return exc


_RUNTIME_DIRS = (os.path.dirname(asyncio.__file__), os.path.dirname(threading.__file__))


#: the worker's own files, whose frames above the user's code a traceback leaves out
_RUNTIME_FILES = (__file__, _thread_cancel.__file__)


def _is_runtime_frame(filename: str) -> bool:
    return filename in _RUNTIME_FILES or (filename.startswith(_RUNTIME_DIRS)
                                          and "site-packages" not in filename)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


# --- process main -------------------------------------------------------------------------


def main(config: dict) -> None:
    """Entry point of a worker process (forked from the node agent's template process)."""
    _redirect_output(config["log_prefix"])
    try:
        import uvloop  # type: ignore[import-not-found]

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(_serve(config))


def _redirect_output(prefix: str) -> None:
    """Send fd 1 and 2 to this worker's log files (line-buffered), read by the node agent."""
    for fd, suffix in ((1, ".out"), (2, ".err")):
        target = os.open(prefix + suffix, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(target, fd)
        os.close(target)
    # the streams live as long as the process: no with block
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8",  # noqa: SIM115
                      errors="replace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8",  # noqa: SIM115
                      errors="replace")


async def _serve(config: dict) -> None:
    loop = asyncio.get_running_loop()
    core = Core(loop=loop, role="worker", token=config["token"],
                session_dir=config["session_dir"], node_address=config["node_address"],
                head_address=config["head_address"],
                store_dir=config["store_dir"], node_id=config["node_id"],
                worker_id=config["worker_id"], tcp_host=config.get("tcp_host", ""))
    core.serve(TaskExecutor(core))
    _global.set_core(core)
    await core.start()
    # what exists now (modules, the runtime) lives as long as the worker: keep it out of
    # every garbage collection, which otherwise grows slow with many calls in flight
    gc.freeze()
    assert core.agent is not None
    core.agent.send(P.WorkerStarted(config["worker_id"], core.address, os.getpid()))
    gone = loop.create_future()
    core.agent.on_close.append(lambda _l: None if gone.done() else gone.set_result(None))
    await gone
    os._exit(0)
