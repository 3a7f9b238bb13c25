"""The node's worker processes as the agent's I/O sees them: spawn, link, reap, kill.

:class:`WorkerTable` wraps :class:`.pool.WorkerPool`: it starts a worker under the name the
lease scheduler chose, keeps each one's link, address, pid and log files, and reports exits.
Which worker serves whom (leasing, lending, recycling) is :mod:`.lease_scheduler`'s to decide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from aray._link import Link

from .logs import LogTail
from .pool import WorkerPool

log = logging.getLogger("aray.node")

#: pids of workers that exited, kept to name their log files (the most recent ones)
MAX_WORKER_PIDS = 10_000


class WorkerHandle:
    """One worker process: its link, address, pid, log files and what it serves."""

    __slots__ = ("worker_id", "pid", "link", "address", "log_prefix", "log_tails", "job_id",
                 "actor_id")

    def __init__(self, worker_id: str, log_prefix: str) -> None:
        self.worker_id = worker_id
        self.pid = 0
        self.link: Link | None = None
        self.address = ""
        self.log_prefix = log_prefix
        self.log_tails = (LogTail(1), LogTail(2))  # where the reader is in .out and .err
        self.job_id = ""  # the job it joined ("" while fresh)
        self.actor_id = ""  # the actor it hosts, for life


class WorkerTable:
    """The worker processes of a node, by worker id.

    Args:
        target: the worker's ``module:function``.
        preload: modules the template process imports once for all workers.
        config: what every worker is started with (its id and log prefix are added).
        logs_dir: where the workers' ``.out`` and ``.err`` files go.
        spawn_task: runs a coroutine as a task the agent owns.
        on_exit: ``on_exit(worker_id, code)`` when a process exits, or could not start
            (``code`` None).

    Examples:
        >>> table = WorkerTable("aray._worker:main", [], {}, "/tmp", None, print)
        >>> table.handles, table.pids
        ({}, {})
    """

    def __init__(self, target: str, preload: list[str], config: dict, logs_dir: str,
                 spawn_task: Callable, on_exit: Callable[[str, int | None], None]) -> None:
        self.pool = WorkerPool(target, preload, on_exit)
        self.config = config
        self._logs_dir = logs_dir
        self._spawn_task = spawn_task
        self._on_exit = on_exit
        self.handles: dict[str, WorkerHandle] = {}
        self.pids: dict[str, int] = {}  # every worker's pid, kept for its log files

    async def warm_up(self) -> None:
        """Start the template process now, so that the first worker is quick."""
        await self.pool.warm_up()

    def spawn(self, worker_id: str) -> WorkerHandle:
        """Start a worker process named ``worker_id`` (in a task; exits are reported)."""
        prefix = os.path.join(self._logs_dir, f"worker-{worker_id}")
        handle = self.handles[worker_id] = WorkerHandle(worker_id, prefix)
        config = dict(self.config, worker_id=worker_id, log_prefix=prefix)
        self._spawn_task(self._launch(handle, config), f"start worker {worker_id}")
        return handle

    async def _launch(self, handle: WorkerHandle, config: dict) -> None:
        try:
            process = await self.pool.start(handle.worker_id, config)
        except Exception:
            log.exception("could not start a worker process")
            self._on_exit(handle.worker_id, None)
            return
        handle.pid = process.pid

    def started(self, worker_id: str, address: str, pid: int) -> None:
        """The worker is up at ``address``; its pid is kept (bounded) to name its logs."""
        handle = self.handles[worker_id]
        handle.address, handle.pid = address, pid
        self.pids[worker_id] = pid
        for old in list(self.pids)[:max(0, len(self.pids) - MAX_WORKER_PIDS)]:
            if old not in self.handles:
                del self.pids[old]

    def forget(self, worker_id: str) -> None:
        """The worker is gone: drop it (its pid stays for its log files)."""
        self.handles.pop(worker_id, None)

    def kill(self, worker_id: str) -> None:
        """Kill the worker's process (SIGKILL); its exit is reported as any other."""
        self.pool.kill(worker_id)

    async def aclose(self) -> None:
        """Stop every worker process and wait for them."""
        await self.pool.aclose()
