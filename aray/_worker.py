"""Worker processes: the task executor and the process main.

A worker runs one asyncio loop with its own :class:`~aray._core.Core` (so tasks can submit
tasks and own refs). Tasks pushed by callers run one at a time in arrival order: plain
functions on a dedicated thread, ``async def`` functions on the loop. Results at most
``INLINE_THRESHOLD`` bytes go back inline; larger ones are written to the node's store and only
their location travels.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import queue
import sys
import threading
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from . import _global
from . import _protocol as P
from ._core import Core
from ._link import Link
from ._objects import INLINE_THRESHOLD
from ._refs import ArgSlot, collect_refs, return_id
from ._runtime_context import TaskContext, current_task
from ._streams import StreamWindow
from ._tasks import load_function
from ._thread_cancel import ThreadCancelled, ThreadCancels
from .exceptions import ActorDiedError, RemoteErrorInfo, TaskCancelledError
from .store._serialize import deserialize, serialize

log = logging.getLogger("aray.worker")



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

    def _stream_sync(self, link: Link, task_id: bytes, result: Any,
                     on_loop: bool = False) -> None:
        """Send each value a generator yields as it comes (runs on the task's thread, or
        ``on_loop``: a sync generator of an async actor, which cannot wait for its
        consumer without stopping the loop that hears from it)."""
        send = self.core.loop.call_soon_threadsafe
        window = self._open_window(link, task_id)
        try:
            for index, value in enumerate(_iterate(result)):
                item = P.StreamItem(task_id, index,
                                    self._resolved(return_id(task_id, index), value))
                send(self._reply, link, item)
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
                self._reply(link, P.StreamItem(
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


class _Lane:
    """The threads of one concurrency group of a sync actor, fed by one queue in order."""

    def __init__(self, run, threads: int, name: str) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._serve, args=(run,), name=f"{name}_{i}",
                             daemon=True).start()

    def _serve(self, run) -> None:
        while True:
            run(*self.queue.get())


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


def _iterate(result: Any):
    try:
        return iter(result)
    except TypeError:
        raise TypeError(f"a streaming task must return an iterable (use yield), not a "
                        f"{type(result).__name__}") from None


class TaskExecutor(_Executor):
    """Runs the tasks pushed to this worker, one at a time, and reports their results."""

    def __init__(self, core: Core) -> None:
        super().__init__(core)
        self.functions: dict[bytes, Any] = {}
        self.queue: deque[tuple[Link, P.PushTask]] = deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="aray-task")
        self.running: P.PushTask | None = None
        self._running_task: asyncio.Task | None = None
        self.cancels = ThreadCancels()  # of the sync task on the pool's thread
        self._runner: asyncio.Task | None = None
        self.actor: ActorExecutor | None = None  # the actor this worker hosts, once created

    # --- messages (the worker's core dispatches them here) -------------------------------
    def _on_PushTask(self, link: Link, msg: P.PushTask) -> None:
        if msg.fn_blob is not None and msg.fn_id not in self.functions:
            self.functions[msg.fn_id] = msg.fn_blob  # unpickled lazily, on the task's thread
        self.queue.append((link, msg))
        if self._runner is None or self._runner.done():
            self._runner = self.core.spawn(self._run_queue(), name="executor")

    def cancel(self, task_id: bytes) -> None:
        for item in self.queue:
            if item[1].task_id == task_id:
                self.queue.remove(item)
                self._send_error(item[0], task_id, item[1].name, TaskCancelledError(item[1].name))
                return
        if self.running is None or self.running.task_id != task_id:
            return
        if self._running_task is not None:
            self._running_task.cancel()
        else:  # a sync task: on its thread now, or about to be
            self.cancels.cancel(task_id, queued=True)

    def _on_CancelTask(self, link: Link, msg: P.CancelTask) -> None:
        (self.actor or self).cancel(msg.task_id)
        if msg.recursive:
            self.core.tasks.cancel_children(msg.task_id)

    def _on_AssignJob(self, link: Link, msg: P.AssignJob) -> None:
        self.core.job_id = msg.job_id
        if msg.code_path and msg.code_path not in sys.path:
            sys.path.append(msg.code_path)  # the job's own modules, where its driver has them
        link.send(P.JobAssigned(msg.req_id))

    def caller_gone(self, link: Link) -> None:
        """Drop queued tasks of a caller whose link closed: nobody waits for them."""
        for item in [i for i in self.queue if i[0] is link]:
            self.queue.remove(item)

    # --- running -----------------------------------------------------------------------
    async def _run_queue(self) -> None:
        while self.queue:
            link, msg = self.queue.popleft()
            self.running = msg
            try:
                await self._execute(link, msg)
            finally:
                self.running = None
                self._running_task = None
                self.cancels.forget(msg.task_id)

    async def _execute(self, link: Link, msg: P.PushTask) -> None:
        ctx = TaskContext(msg.task_id, msg.job_id, msg.name, list(msg.gpu_ids), owner=msg.owner)
        token = current_task.set(ctx)
        self._started(msg.task_id, msg.name, msg.job_id, "NORMAL_TASK")
        set_visible_gpus(msg.gpu_ids)
        self.core.job_id = msg.job_id  # a worker serves one job
        try:
            fn = self._function(msg.fn_id)
            if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                await self.core.fetcher.fetch_values(msg.deps)  # on the loop: pull before reading
                args, kwargs = self._arguments(msg.args, msg.deps)
                self._mark(msg.job_id, msg.name)
                if msg.num_returns < 0:
                    self._running_task = self.core.loop.create_task(
                        self._stream_async(link, msg.task_id, fn(*args, **kwargs)))
                    await self._running_task
                    results = []
                else:
                    self._running_task = self.core.loop.create_task(fn(*args, **kwargs))
                    result = await self._running_task
                    results = await self._pack_async(msg.name, msg.return_ids, msg.num_returns,
                                                     result)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self.pool, self._run_sync, fn, link, msg,
                                                     ctx)
        except BaseException as exc:  # user code raised (or the task was cancelled)
            if isinstance(exc, asyncio.CancelledError):
                this = asyncio.current_task()
                if self.core.loop.is_closed() or this is not None and this.cancelling():
                    raise  # the executor itself is stopped (worker shutdown), not the task
            self._send_error(link, msg.task_id, msg.name, _cancel_named(exc, msg.name))
            return
        finally:
            current_task.reset(token)
            _flush_std()
        self._reply(link, P.TaskFinished(msg.task_id, results, None))

    def _run_sync(self, fn, link: Link, msg: P.PushTask, ctx: TaskContext) -> list:
        """On the pool's thread: the task's user code (cancellable), then its results."""
        current_task.set(ctx)
        result = self.cancels.run(msg.task_id, self._call_user, fn, link, msg)
        if msg.num_returns < 0:
            return []
        return self._pack(msg.name, msg.return_ids, msg.num_returns, result)

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

    * async actors (any ``async def`` method): every call is an asyncio task on this loop,
      at most ``max_concurrency`` at once (per concurrency group);
    * threaded actors (``max_concurrency > 1``): calls run on a pool of that many threads;
    * plain actors: one call at a time, in arrival order, on one thread.
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
        groups = {"": spec["max_concurrency"], **(spec.get("concurrency_groups") or {})}
        if self.is_async:
            self.limits = {g: asyncio.Semaphore(n) for g, n in groups.items()}
        else:
            self.lanes = {g: _Lane(self._run_call, n, f"aray-actor-{g or 'main'}")
                          for g, n in groups.items()}
        self._replies: list[tuple[Link, Any]] = []  # finished sync calls, sent in batches
        self._replies_lock = threading.Lock()
        self.cancels = ThreadCancels()  # of sync calls on the lanes' threads
        self._sync_calls: set[bytes] = set()  # (loop) sync calls queued or running
        self.instance: Any = None
        self.calls: dict[bytes, asyncio.Task] = {}
        set_visible_gpus(self.gpu_ids)

    def _context(self, task_id: bytes, name: str, owner: str = "") -> TaskContext:
        return TaskContext(task_id, self.job_id, name, self.gpu_ids, self.actor_id, owner)

    async def start(self, agent: Link) -> None:
        name = f"{self.class_name}.__init__"
        error = None
        try:
            cls = load_function(self.spec["class_blob"])
            if self.is_async:  # on the loop, so it may create asyncio objects
                token = current_task.set(self._context(b"", name))
                try:
                    await self.core.fetcher.fetch_values(self.spec["deps"])
                    args, kwargs = self._arguments(self.spec["args"], self.spec["deps"])
                    self._mark(self.job_id, self.class_name)
                    self.instance = cls(*args, **kwargs)
                finally:
                    current_task.reset(token)
            else:
                self.instance = await asyncio.to_thread(self._construct, cls, name)
        except BaseException as exc:
            error = self._error_blob(name, exc)
        finally:
            _flush_std()
        core = self.core
        agent.send_if_open(P.ActorStarted(self.actor_id, core.worker_id, core.address,
                                            os.getpid(), core.node_id, error))

    def _construct(self, cls, name: str):
        current_task.set(self._context(b"", name))
        args, kwargs = self._arguments(self.spec["args"], self.spec["deps"])
        self._mark(self.job_id, self.class_name)
        return cls(*args, **kwargs)

    def call(self, link: Link, msg: P.CallActor) -> None:
        group = msg.group or self.method_groups.get(msg.method, "")
        if self.is_async:
            task = self.core.spawn(self._call_async(link, msg, group), name=msg.method)
            self.calls[msg.task_id] = task
            task.add_done_callback(lambda _t: self.calls.pop(msg.task_id, None))
        else:  # queued now, in arrival order: a one-thread lane runs them in that order
            self._sync_calls.add(msg.task_id)
            self.lanes[group].queue.put((link, msg))

    def cancel(self, task_id: bytes) -> None:
        task = self.calls.get(task_id)
        if task is not None:
            task.cancel()
        elif task_id in self._sync_calls:  # running, or still queued on its lane
            self.cancels.cancel(task_id, queued=True)

    def _call_sync(self, link: Link, msg: P.CallActor) -> list:
        current_task.set(self._context(msg.task_id, f"{self.class_name}.{msg.method}",
                                       msg.owner))
        self._started(msg.task_id, f"{self.class_name}.{msg.method}", self.job_id, "ACTOR_TASK")
        result = self.cancels.run(msg.task_id, self._call_user, link, msg)
        if msg.num_returns < 0:
            return []
        return self._pack(msg.method, msg.return_ids, msg.num_returns, result)

    def _call_user(self, link: Link, msg: P.CallActor) -> Any:
        args, kwargs = self._arguments(msg.args, msg.deps)
        self._mark(self.job_id, self.class_name)
        result = getattr(self.instance, msg.method)(*args, **kwargs)
        if msg.num_returns < 0:  # the generator runs (and is cancelled) here
            self._stream_sync(link, msg.task_id, result)
        return result

    def _run_call(self, link: Link, msg: P.CallActor) -> None:
        """On a lane thread: run one call and queue its reply for the loop."""
        name = f"{self.class_name}.{msg.method}"
        try:
            reply = P.TaskFinished(msg.task_id, self._call_sync(link, msg), None)
        except BaseException as exc:
            reply = P.TaskFinished(msg.task_id, [], self._error_blob(
                name, _cancel_named(exc, name), msg.task_id))
        _flush_std()
        with self._replies_lock:
            self._replies.append((link, reply))
            wake = len(self._replies) == 1  # the loop is already due to send the others
        if wake:
            self.core.loop.call_soon_threadsafe(self._send_replies)

    def _send_replies(self) -> None:
        with self._replies_lock:
            replies, self._replies = self._replies, []
        for link, reply in replies:
            self._sync_calls.discard(reply.task_id)
            self.cancels.forget(reply.task_id)
            self._reply(link, reply)

    async def _call_async(self, link: Link, msg: P.CallActor, group: str) -> None:
        name = f"{self.class_name}.{msg.method}"
        token = current_task.set(self._context(msg.task_id, name, msg.owner))
        self._started(msg.task_id, name, self.job_id, "ACTOR_TASK")
        try:
            async with self.limits[group]:
                await self.core.fetcher.fetch_values(msg.deps)
                args, kwargs = self._arguments(msg.args, msg.deps)
                self._mark(self.job_id, self.class_name)
                result = getattr(self.instance, msg.method)(*args, **kwargs)
                if msg.num_returns < 0:
                    await self._stream_async(link, msg.task_id, result)
                    results: list = []
                else:
                    if inspect.isawaitable(result):
                        result = await result
                    results = await self._pack_async(msg.method, msg.return_ids,
                                                     msg.num_returns, result)
        except BaseException as exc:
            self._send_error(link, msg.task_id, name, _cancel_named(exc, name))
            return
        finally:
            current_task.reset(token)
            _flush_std()
        self._reply(link, P.TaskFinished(msg.task_id, results, None))


def _cancel_named(exc: BaseException, name: str) -> BaseException:
    """The error to report for ``exc``: a cancel (of the loop's task, or raised in the
    call's thread) becomes TaskCancelledError naming the call."""
    if isinstance(exc, (asyncio.CancelledError, ThreadCancelled)):
        return TaskCancelledError(name).with_traceback(exc.__traceback__)
    return exc


_RUNTIME_DIRS = (os.path.dirname(asyncio.__file__), os.path.dirname(threading.__file__))


def _is_runtime_frame(filename: str) -> bool:
    return filename == __file__ or (filename.startswith(_RUNTIME_DIRS)
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
