"""Forwarding what workers print to the drivers that want it (the glue around LogTail).

:class:`LogForwarder` reads each worker's ``.out`` and ``.err`` in bounded chunks on a
periodic round, hands the bytes to the worker's :class:`.logs.LogTail` and sends the lines it
gives to the job's drivers on this node, or to the head for a driver elsewhere. It also
answers the dashboard's listing and reads of the log files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from aray import _protocol as P
from aray._link import Link
from aray._periodic import every

from .logs import list_log_files, read_log
from .workers import WorkerHandle

log = logging.getLogger("aray.node")

#: the log reader's rounds: this often, and this often while a flood leaves output unread
LOG_POLL_INTERVAL = 0.1
LOG_CATCH_UP_INTERVAL = 0.01
#: a log file is read LOG_CHUNK bytes at a time, at most LOG_BUDGET per stream and round:
#: a flood goes out over several rounds, and the file (not the agent) holds the rest
LOG_CHUNK = 256 * 1024
LOG_BUDGET = 1 << 20
#: a link with more messages than this waiting (its peer reads slower than it gets output)
#: gets no new log lines in a round: they wait in the file
LOG_BACKLOG = 4


class LogForwarder:
    """Sends workers' output to drivers, a bounded amount per round.

    Args:
        logs_dir: the session's ``logs`` directory.
        drivers: the drivers of this node, link -> their Hello info (shared, not copied).
        workers: the live worker handles (called each round).
        pids: worker id -> pid, kept after exits (to name log files).
        head: the link to the head, or None (called when needed).
        remote_readers: whether other nodes exist, whose drivers may want the output.
        spawn_task: runs a coroutine as a task the agent owns.
    """

    def __init__(self, logs_dir: str, drivers: dict, workers: Callable[[], Iterable],
                 pids: dict, head: Callable[[], Link | None],
                 remote_readers: Callable[[], bool], spawn_task: Callable) -> None:
        self.logs_dir = logs_dir
        self._drivers = drivers
        self._workers = workers
        self._pids = pids
        self._head = head
        self._remote_readers = remote_readers
        self._spawn_task = spawn_task
        self._behind = False  # the last round left output unread
        self._exited: list[WorkerHandle] = []  # exited workers whose output is not all read

    async def run(self) -> None:
        """Read and forward, round after round, until cancelled."""
        await every(lambda: LOG_CATCH_UP_INTERVAL if self._behind else LOG_POLL_INTERVAL,
                    self._round, name="the log reader", log=log, first_delay=LOG_POLL_INTERVAL)

    def worker_exited(self, worker: WorkerHandle) -> None:
        """Forward a worker's last words; what a round cannot take goes in later rounds."""
        if self._read(worker, flush=True, ended=True):
            self._exited.append(worker)

    def _round(self) -> None:
        self._behind = False
        if self._drivers or self._remote_readers():  # someone may read them
            for worker in list(self._workers()):
                self._behind |= self._read(worker)
        for worker in list(self._exited):
            if self._read(worker, flush=True, ended=True):
                self._behind = True
            else:
                self._exited.remove(worker)

    def _on_ListLogs(self, link: Link, msg: P.ListLogs) -> None:
        alive = {w.worker_id for w in self._workers()}
        link.send(P.LogFiles(msg.req_id, list_log_files(self.logs_dir, self._pids, alive)))

    def _on_ReadLog(self, link: Link, msg: P.ReadLog) -> None:
        data, offset, size, error = read_log(self.logs_dir, msg.file, msg.offset, msg.limit)
        link.send(P.LogData(msg.req_id, data, offset, size, error))

    def _on_FlushLogs(self, link: Link, msg: P.FlushLogs) -> None:
        self._spawn_task(self._flush(link, msg.req_id), "flush logs")

    async def _flush(self, link: Link, req_id: int) -> None:
        """Forward what the driver's workers printed, partial lines too, then tell the
        driver (which waits for that before it shuts down); a round's budget at a time, so
        that its link keeps up, until caught up or until the driver stops waiting."""
        job = self._drivers.get(link, {}).get("job_id", "")
        while not link.closed and any([
                self._read(worker, flush=True)
                for worker in [*self._workers(), *self._exited]
                if worker.job_id in ("", job)]):  # not the workers of drivers that lag
            await asyncio.sleep(LOG_CATCH_UP_INTERVAL)
        link.send_if_open(P.LogsFlushed(req_id))

    def _read(self, worker: WorkerHandle, flush: bool = False, ended: bool = False) -> bool:
        """Forward what is new in the worker's .out and .err, up to LOG_BUDGET bytes of
        each; True if some is left for a later round (the budget ran out, or, when
        ``flush``, a link it goes to is behind). ``flush``: a stream read to its end sends
        its partial line too (``ended``: the worker exited)."""
        now = time.monotonic()
        left = False
        for tail in worker.log_tails:
            if any(link.queued > LOG_BACKLOG for link in self._links(tail.job)):
                # the file keeps it; the reader catches up at the link's pace
                left = left or flush
                continue
            path = worker.log_prefix + (".out" if tail.stream == 1 else ".err")
            budget = LOG_BUDGET
            try:
                with open(path, "rb") as f:
                    f.seek(tail.offset)
                    while budget > 0:
                        data = f.read(min(LOG_CHUNK, budget))
                        budget -= len(data)
                        self._send(worker, tail.feed(data, now))  # b"": a partial is due?
                        if not data:
                            break
            except FileNotFoundError:
                continue
            if budget <= 0:
                left = True
            elif flush:
                self._send(worker, tail.flush(ended))
        return left

    def _links(self, job: str) -> list[Link]:
        """Where output printed under ``job`` goes: the job's drivers on this node that want
        it (output before any task: every driver here), else the head, which forwards it to
        the job's driver on another node."""
        links: list[Link] = []
        local = False
        for link, info in self._drivers.items():
            if not job or info.get("job_id") == job:
                local = True
                if info.get("log_to_driver", True) and not link.closed:
                    links.append(link)
        head = self._head()
        if not local and job and head is not None and not head.closed:
            links.append(head)
        return links

    def _send(self, worker: WorkerHandle, batches: list) -> None:
        for task, job, stream, lines in batches:
            msg = P.LogLines(worker.pid, task, stream, lines, job)
            for link in self._links(job):
                link.send(msg)
