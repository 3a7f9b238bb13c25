"""Worker processes: the task executor and the process main.

A worker runs one asyncio loop with its own :class:`~aray._core.Core` (so tasks can submit
tasks and own refs). Tasks pushed by callers run one at a time in arrival order: plain
functions on a dedicated thread, ``async def`` functions on the loop. Results at most
``INLINE_THRESHOLD`` bytes go back inline; larger ones are written to the node's store and only
their location travels.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import logging
import os
import sys
import threading
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from . import _global
from . import _protocol as P
from ._core import INLINE_THRESHOLD, Core, load_function
from ._link import Link
from ._refs import ArgSlot
from ._runtime_context import TaskContext, current_task
from .exceptions import RemoteErrorInfo, TaskCancelledError
from .store._serialize import deserialize, serialize

log = logging.getLogger("aray.worker")

#: a line a worker prints when it starts a task, so its node agent can prefix later output
TASK_MARKER = "::aray-task::"


class TaskExecutor:
    """Runs the tasks pushed to this worker, one at a time, and reports their results."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.functions: dict[bytes, Any] = {}
        self.queue: deque[tuple[Link, P.PushTask]] = deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="aray-task")
        self.running: P.PushTask | None = None
        self._running_task: asyncio.Task | None = None
        self._thread_id: int | None = None
        self._runner: asyncio.Task | None = None
        self._marked = ""

    # --- messages ----------------------------------------------------------------------
    def push(self, link: Link, msg: P.PushTask) -> None:
        if msg.fn_blob is not None and msg.fn_id not in self.functions:
            self.functions[msg.fn_id] = msg.fn_blob  # unpickled lazily, on the task's thread
        self.queue.append((link, msg))
        if self._runner is None or self._runner.done():
            self._runner = self.core.spawn(self._run_queue(), name="executor")

    def cancel(self, task_id: bytes) -> None:
        for item in self.queue:
            if item[1].task_id == task_id:
                self.queue.remove(item)
                self._send_error(item[0], item[1], TaskCancelledError(item[1].name))
                return
        if self.running is None or self.running.task_id != task_id:
            return
        if self._running_task is not None:
            self._running_task.cancel()
        elif self._thread_id is not None:
            # raise TaskCancelledError inside the task's thread at its next bytecode
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_id), ctypes.py_object(TaskCancelledError))

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
                self._thread_id = None

    async def _execute(self, link: Link, msg: P.PushTask) -> None:
        ctx = TaskContext(msg.task_id, msg.job_id, msg.name, list(msg.gpu_ids))
        token = current_task.set(ctx)
        try:
            fn = self._function(msg.fn_id)
            if inspect.iscoroutinefunction(fn):
                args, kwargs = self._arguments(msg)
                self._mark(msg)
                self._running_task = self.core.loop.create_task(fn(*args, **kwargs))
                result = await self._running_task
                results = self._pack(msg, result)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self.pool, self._run_sync, fn, msg, ctx)
        except BaseException as exc:  # user code raised (or the task was cancelled)
            if isinstance(exc, asyncio.CancelledError):
                if self.core.loop.is_closed():
                    raise
                exc = TaskCancelledError(msg.name)
            self._send_error(link, msg, exc)
            return
        finally:
            current_task.reset(token)
            _flush_std()
        if not link.closed:
            link.send(P.TaskFinished(msg.task_id, results, None))

    def _run_sync(self, fn, msg: P.PushTask, ctx: TaskContext) -> list:
        current_task.set(ctx)
        self._thread_id = threading.get_ident()
        try:
            args, kwargs = self._arguments(msg)
            self._mark(msg)
            if msg.gpu_ids:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in msg.gpu_ids)
            result = fn(*args, **kwargs)
            return self._pack(msg, result)
        finally:
            self._thread_id = None

    def _function(self, fn_id: bytes):
        fn = self.functions.get(fn_id)
        if fn is None:
            raise RuntimeError("the function of this task never reached the worker")
        if isinstance(fn, bytes):
            fn = self.functions[fn_id] = load_function(fn)
        return fn

    def _arguments(self, msg: P.PushTask) -> tuple[tuple, dict]:
        args, kwargs = deserialize(msg.args)
        if not msg.deps:
            return args, kwargs
        values = [self.core.value_of_resolved(oid, value) for oid, value in msg.deps]

        def fill(v):
            return values[v.index] if isinstance(v, ArgSlot) else v

        return tuple(fill(a) for a in args), {k: fill(v) for k, v in kwargs.items()}

    def _pack(self, msg: P.PushTask, result: Any) -> list:
        n = msg.num_returns
        if n == 1:
            values = [result]
        elif n == 0:
            values = []
        else:
            try:
                values = list(result)
            except TypeError:
                raise ValueError(
                    f"{msg.name} has num_returns={n} but returned a {type(result).__name__}, "
                    f"not a sequence of {n} values") from None
            if len(values) != n:
                raise ValueError(
                    f"{msg.name} has num_returns={n} but returned {len(values)} values")
        out = []
        for oid, value in zip(msg.return_ids, values):
            ser = serialize(value)
            if ser.total_size > INLINE_THRESHOLD:
                self.core.store.write(oid, ser)
                out.append(["s", self.core.node_id, ser.total_size])
            else:
                out.append(["v", ser.to_bytes()])
        return out

    def _send_error(self, link: Link, msg: P.PushTask, exc: BaseException) -> None:
        if link.closed:
            return
        tb = exc.__traceback__
        # drop the runtime's own frames (executor, thread pool, asyncio) from the top
        while tb is not None and _is_runtime_frame(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        info = RemoteErrorInfo(exc, type(exc).__name__, str(exc), text, msg.name,
                               self.core.node_id, os.getpid())
        try:
            blob = cloudpickle.dumps(info)
        except Exception:
            info.cause = None
            blob = cloudpickle.dumps(info)
        link.send(P.TaskFinished(msg.task_id, [], blob))

    def _mark(self, msg: P.PushTask) -> None:
        """Tell the node agent's log reader which task the following output belongs to."""
        marker = f"{msg.job_id}::{msg.name}"
        if marker != self._marked:
            self._marked = marker
            line = f"{TASK_MARKER}{marker}\n"
            sys.stdout.write(line)
            sys.stdout.flush()
            sys.stderr.write(line)
            sys.stderr.flush()


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
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")


async def _serve(config: dict) -> None:
    loop = asyncio.get_running_loop()
    core = Core(loop=loop, role="worker", token=config["token"],
                session_dir=config["session_dir"], node_address=config["node_address"],
                store_dir=config["store_dir"], node_id=config["node_id"],
                worker_id=config["worker_id"])
    core.executor = TaskExecutor(core)
    _global.set_core(core)
    await core.start()
    assert core.agent is not None
    core.agent.send(P.WorkerStarted(config["worker_id"], core.address, os.getpid()))
    gone = loop.create_future()
    core.agent.on_close.append(lambda _l: gone.done() or gone.set_result(None))
    await gone
    os._exit(0)
