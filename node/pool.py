"""Worker processes, forked from a pre-imported template process.

The template is multiprocessing's forkserver with the worker module preloaded: it pays the
interpreter start and the imports once, and each worker after that is a fork (milliseconds).
Exits are noticed through each process's sentinel on the event loop, with no polling.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable

log = logging.getLogger("aray.node")


def _child_main(target: str, config: dict) -> None:
    """Runs in the forked worker: resolve ``module:function`` and call it."""
    module, _, func = target.partition(":")
    getattr(importlib.import_module(module), func)(config)


class WorkerProcess:
    """A started worker process: its id, the process object and its pid."""

    __slots__ = ("worker_id", "process", "pid")

    def __init__(self, worker_id: str, process) -> None:
        self.worker_id = worker_id
        self.process = process
        self.pid: int = process.pid


class WorkerPool:
    """Starts, tracks and reaps worker processes; ``on_exit(worker_id, code)`` on each exit."""

    def __init__(self, target: str, preload: list[str],
                 on_exit: Callable[[str, int | None], None]) -> None:
        self._target = target
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(preload)
        self._on_exit = on_exit
        self.processes: dict[str, WorkerProcess] = {}
        self._exited: dict[str, asyncio.Event] = {}

    async def warm_up(self) -> None:
        """Start the template process now, off the loop, so the first worker is quick."""
        from multiprocessing import forkserver

        await asyncio.get_running_loop().run_in_executor(None, forkserver.ensure_running)

    async def start(self, worker_id: str, config: dict) -> WorkerProcess:
        """Fork a worker from the template process; its exit is reported to ``on_exit``."""
        loop = asyncio.get_running_loop()
        process = self._ctx.Process(target=_child_main, args=(self._target, config),
                                    name=f"aray-worker-{worker_id}", daemon=False)
        # start() talks to the template process over a socket: keep it off the loop
        await loop.run_in_executor(None, process.start)
        handle = WorkerProcess(worker_id, process)
        self.processes[worker_id] = handle
        self._exited[worker_id] = asyncio.Event()
        loop.add_reader(process.sentinel, self._reap, worker_id)
        return handle

    def _reap(self, worker_id: str) -> None:
        handle = self.processes.pop(worker_id, None)
        if handle is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(handle.process.sentinel)
        handle.process.join(0)
        code = handle.process.exitcode
        handle.process.close()
        self._exited.pop(worker_id).set()
        self._on_exit(worker_id, code)

    def kill(self, worker_id: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker, if it still runs."""
        handle = self.processes.get(worker_id)
        if handle is not None:
            try:
                os.kill(handle.pid, sig)
            except ProcessLookupError:
                pass

    async def aclose(self, grace: float = 1.0) -> None:
        """Stop every worker: SIGTERM, then SIGKILL after ``grace`` seconds; wait for all."""
        waits = [e.wait() for e in self._exited.values()]
        for worker_id in list(self.processes):
            self.kill(worker_id, signal.SIGTERM)
        if waits:
            done, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits],
                                               timeout=grace)
            if pending:
                for worker_id in list(self.processes):
                    self.kill(worker_id, signal.SIGKILL)
                await asyncio.wait(pending, timeout=5)
