"""Submitted jobs: entrypoints the cluster runs as supervised processes (``aray job submit``).

A job is a shell command (``python script.py ARGS``). The head keeps its record and places
it: on the head's node, or, when its ``entrypoint_num_cpus``/``_gpus``/``_resources`` ask
for what that node lacks, on a node that has them. That node's agent
(:mod:`aray.node.entrypoints`) holds those resources while it runs, sets up the job's
runtime env, runs the command with ``ARAY_ADDRESS`` pointing at that node (so that
``aray.init()`` inside it joins the cluster there, as a driver whose tasks inherit the
job's env, ``ARAY_JOB_RUNTIME_ENV``), writes its output to a log file that outlives it, and reports
when it started and how it ended. States, as in Ray: PENDING (placed, its env being set
up), RUNNING, then SUCCEEDED, FAILED or STOPPED.

The records live in the head (they outlive the entrypoint and any client), at most
:data:`MAX_JOBS` of them; finished ones go first when there are more.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _protocol as P
from .._link import Link
from .._runtime_env import PACKAGE_SCHEME, check
from ..node.scheduler import fits

if TYPE_CHECKING:
    from .server import Head

#: job records kept (finished ones are dropped, oldest first, beyond it)
MAX_JOBS = 1000
#: how long a stopped job has between SIGTERM and SIGKILL (Ray's default is 3 s)
STOP_GRACE = float(os.environ.get("ARAY_JOB_STOP_GRACE_SECONDS", "3"))
#: what a submission id may be: it names a log file
SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
#: how long a job waits for a node with its entrypoint's resources (Ray's default: 15 min)
START_TIMEOUT = float(os.environ.get("ARAY_JOB_START_TIMEOUT_SECONDS", "900"))
#: how often a job that waits for such a node looks again
PLACE_INTERVAL = 0.5


class JobStatus(enum.StrEnum):
    """A submitted job's state (Ray's ``ray.job_submission.JobStatus``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def is_terminal(self) -> bool:
        """Whether the job has ended (it will not change again).

        Example:
            >>> JobStatus.RUNNING.is_terminal(), JobStatus.FAILED.is_terminal()
            (False, True)
        """
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobError(ValueError):
    """A request about jobs that cannot be done (unknown id, taken id, bad field)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status it answers with


class JobManager:
    """The submitted jobs of one head, on the head's loop.

    Args:
        head: the head (its nodes, their links, its own node).

    Example:
        >>> from aray._head.server import Head
        >>> JobManager(Head("token")).list()
        []
    """

    def __init__(self, head: Head) -> None:
        self.head = head
        self.jobs: dict[str, dict] = {}
        #: told of each job whose record changed (its record, None once deleted): the
        #: head's storage
        self.on_change: Callable[[str, dict | None], None] = lambda submission_id, job: None
        self._stopping: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    # --- requests --------------------------------------------------------------------------
    def submit(self, entrypoint: str, submission_id: str | None = None,
               runtime_env: dict | None = None, metadata: dict | None = None,
               entrypoint_num_cpus: float = 0, entrypoint_num_gpus: float = 0,
               entrypoint_resources: dict | None = None) -> str:
        """Record a job and place it; returns its submission id.

        Raises JobError for an empty entrypoint, a taken or malformed id, bad resources,
        or a runtime env whose folders were not uploaded.
        """
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise JobError("the entrypoint must be a non-empty shell command, such as "
                           "'python script.py'")
        submission_id = submission_id or f"aray_submit_{uuid.uuid4().hex[:16]}"
        if not isinstance(submission_id, str) or not SUBMISSION_ID.match(submission_id):
            raise JobError(f"submission id {submission_id!r} is not valid: use letters, "
                           "digits, '_', '-' and '.' (at most 128)")
        if submission_id in self.jobs:
            raise JobError(f"a job with submission id {submission_id!r} exists already; "
                           "choose another id, or delete that job first", status=409)
        try:
            env = check(runtime_env or {}, "the job's runtime_env")
        except (TypeError, ValueError) as exc:
            raise JobError(str(exc)) from None
        for field in ("working_dir", "py_modules"):
            paths = env.get(field, [])
            for path in [paths] if isinstance(paths, str) else paths:
                if not path.startswith(PACKAGE_SCHEME):
                    raise JobError(f"runtime_env {field} {path!r} is a path on the submitting "
                                   "machine: upload it first (JobSubmissionClient and `aray "
                                   "job submit` do)")
        resources = _entrypoint_resources(entrypoint_num_cpus, entrypoint_num_gpus,
                                          entrypoint_resources)
        now = time.time()
        self.jobs[submission_id] = {
            "type": "SUBMISSION", "submission_id": submission_id, "job_id": submission_id,
            "entrypoint": entrypoint, "status": JobStatus.PENDING,
            "message": "Job has not started yet.", "start_time": int(now * 1000),
            "end_time": None, "driver_exit_code": None, "runtime_env": env,
            "metadata": dict(metadata or {}), "entrypoint_num_cpus": entrypoint_num_cpus,
            "entrypoint_num_gpus": entrypoint_num_gpus,
            "entrypoint_resources": dict(entrypoint_resources or {}), "driver_pid": None,
            "driver_node_id": None, "log_file": None, "resources": resources,
        }
        self._bound()
        self.on_change(submission_id, self.jobs[submission_id])
        task = asyncio.get_running_loop().create_task(self._place(submission_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return submission_id

    def info(self, submission_id: str) -> dict:
        """The job's record (Ray's ``JobDetails`` fields); JobError 404 if unknown."""
        job = self.jobs.get(submission_id)
        if job is None:
            raise JobError(f"no job with submission id {submission_id!r}: `aray job list` "
                           "shows the jobs of this cluster", status=404)
        out = {k: v for k, v in job.items() if k not in ("log_file", "resources")}
        return dict(out, status=str(job["status"]))

    def list(self) -> list[dict]:
        """Every job's record, oldest first."""
        return [self.info(s) for s in self.jobs]

    async def read_log(self, submission_id: str, offset: int) -> tuple[str, int]:
        """The job's output from ``offset`` (up to a read's worth) and where it ends."""
        from ..node.logs import MAX_READ
        from .views import read_log

        self.info(submission_id)
        job = self.jobs[submission_id]
        if job["log_file"] is None:
            return "", offset
        try:
            part = await read_log(self.head, job["driver_node_id"], job["log_file"], offset,
                                  MAX_READ)
        except LookupError:  # its node is gone, and its log with it
            return "", offset
        return part["data"], part["offset"]

    async def logs(self, submission_id: str) -> str:
        """All the job's output so far."""
        pieces: list[str] = []
        offset = 0
        while True:
            text, end = await self.read_log(submission_id, offset)
            if end == offset:
                return "".join(pieces)
            pieces.append(text)
            offset = end

    def stop(self, submission_id: str) -> bool:
        """Have its node SIGTERM the job's processes, then SIGKILL them after the grace
        period; False if it had ended."""
        job = self.jobs.get(submission_id)
        self.info(submission_id)
        assert job is not None
        if job["status"].is_terminal():
            return False
        self._stopping.add(submission_id)
        link = self.head.node_link(job["driver_node_id"]) if job["driver_node_id"] else None
        if link is not None:
            link.send(P.StopEntrypoint(submission_id, STOP_GRACE))
        return True

    def delete(self, submission_id: str) -> bool:
        """Forget an ended job; JobError if it still runs."""
        job = self.info(submission_id)
        if not JobStatus(job["status"]).is_terminal():
            raise JobError(f"job {submission_id!r} is {job['status']}: stop it before "
                           "deleting it (`aray job stop`)")
        del self.jobs[submission_id]
        self.on_change(submission_id, None)
        return True

    def restore(self, rows: dict[str, dict]) -> None:
        """The records a restarted head read back from its storage."""
        for submission_id, job in rows.items():
            self.jobs[submission_id] = dict(job, status=JobStatus(job["status"]))

    def aclose(self) -> None:
        """Stop every running job (the head is stopping)."""
        for submission_id, job in self.jobs.items():
            if not job["status"].is_terminal():
                self.stop(submission_id)

    # --- placing, and what the nodes report --------------------------------------------------
    async def _place(self, submission_id: str) -> None:
        job = self.jobs[submission_id]
        shape = job["resources"]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if submission_id in self._stopping:
                self._end(job, JobStatus.STOPPED, "Job was stopped before it started.")
                return
            node_id = self._choose_node(shape)
            link = self.head.node_link(node_id) if node_id else None
            if link is not None:
                break
            if time.monotonic() > deadline:
                self._end(job, JobStatus.FAILED, f"no node of the cluster has the resources "
                          f"of its entrypoint ({shape}) after {START_TIMEOUT:g} s")
                return
            await asyncio.sleep(PLACE_INTERVAL)
        job["driver_node_id"] = node_id
        self.on_change(submission_id, job)
        variables = {"ARAY_SUBMISSION_ID": submission_id,
                     "ARAY_JOB_RUNTIME_ENV": json.dumps(job["runtime_env"])}
        link.send(P.StartEntrypoint(submission_id, job["entrypoint"], job["runtime_env"],
                                    variables, shape))

    def _choose_node(self, shape: dict) -> str:
        """The head's node if it has the resources at all, else the live node with the
        most of them free ("" for none)."""
        nodes = [n for n in self.head.nodes.iter_alive() if fits(shape, n.total)]
        for node in nodes:
            if node.node_id == self.head.local_node_id:
                return node.node_id
        if not nodes:
            return ""
        return max(nodes, key=lambda n: n.available.get("CPU", 0.0)).node_id

    def _on_EntrypointStarted(self, link: Link, msg: P.EntrypointStarted) -> None:
        job = self.jobs.get(msg.submission_id)
        if job is not None and not job["status"].is_terminal():
            job.update(status=JobStatus.RUNNING, message="Job is currently running.",
                       driver_pid=msg.pid, log_file=msg.log_file)
            self.on_change(msg.submission_id, job)

    def _on_EntrypointEnded(self, link: Link, msg: P.EntrypointEnded) -> None:
        self._entrypoint_ended(msg)

    def _entrypoint_ended(self, msg: P.EntrypointEnded) -> None:
        job = self.jobs.get(msg.submission_id)
        if job is None or job["status"].is_terminal():
            return
        job["driver_exit_code"] = msg.exit_code
        code = msg.exit_code
        if msg.submission_id in self._stopping:
            self._stopping.discard(msg.submission_id)
            self._end(job, JobStatus.STOPPED, "Job was intentionally stopped.")
        elif code is None:
            self._end(job, JobStatus.FAILED, f"Job did not start: {msg.message}")
        elif code == 0:
            self._end(job, JobStatus.SUCCEEDED, "Job finished successfully.")
        else:
            why = ("the command was not found" if code == 127 else
                   f"it was killed by signal {-code}" if code < 0 else
                   f"its last line: {msg.message}")
            self._end(job, JobStatus.FAILED,
                      f"Job entrypoint command failed with exit code {code}: {why}")

    def node_registered(self, node_id: str, held: dict) -> None:
        """A node back after a head restart says which of its entrypoints run and which
        ended (their news may have been lost with the old head): the records follow."""
        running, ended = set(held.get("running", [])), held.get("ended", {})
        for sid, job in list(self.jobs.items()):
            if job["driver_node_id"] != node_id or job["status"].is_terminal():
                continue
            if sid in ended:
                code, message = ended[sid]
                self._entrypoint_ended(P.EntrypointEnded(sid, code, message))
            elif sid not in running and job["status"] is JobStatus.RUNNING:
                self._end(job, JobStatus.FAILED, "its entrypoint was gone when its node "
                          "came back to the restarted head")

    def node_lost(self, node_id: str) -> None:
        """A node died: the jobs it ran (or was about to) fail."""
        for job in self.jobs.values():
            if job["driver_node_id"] == node_id and not job["status"].is_terminal():
                self._end(job, JobStatus.FAILED, f"the node {node_id[:12]} that ran its "
                          "entrypoint died")

    def _end(self, job: dict, status: JobStatus, message: str) -> None:
        job.update(status=status, message=message, end_time=int(time.time() * 1000))
        self.on_change(job["submission_id"], job)

    def _bound(self) -> None:
        finished = [s for s, j in self.jobs.items() if j["status"].is_terminal()]
        for submission_id in finished[:max(0, len(self.jobs) - MAX_JOBS)]:
            self.delete(submission_id)


def _entrypoint_resources(cpus, gpus, resources) -> dict:
    """The resources an entrypoint holds while it runs (JobError for bad amounts).

    Example:
        >>> _entrypoint_resources(1, 0, {"X": 2})
        {'CPU': 1.0, 'X': 2.0}
    """
    if resources is not None and not isinstance(resources, dict):
        raise JobError("entrypoint_resources must map resource names to amounts")
    shape = {}
    for name, value in (("CPU", cpus), ("GPU", gpus), *(resources or {}).items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise JobError(f"the entrypoint's {name} must be a number >= 0, got {value!r}")
        if value:
            shape[str(name)] = float(value)
    return shape
