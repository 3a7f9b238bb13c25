"""Submitted jobs: entrypoints the head runs as supervised processes (``aray job submit``).

A job is a shell command (``python script.py ARGS``) run on the head's node in the job's
runtime env: its ``working_dir`` unpacked (from the package the submitter uploaded) as the
current directory, its ``py_modules`` and ``pip`` environment on ``PYTHONPATH``, its
``env_vars`` set, and ``ARAY_ADDRESS`` pointing at this cluster, so that ``aray.init()``
inside it joins the cluster as a driver whose tasks inherit the same env
(``ARAY_JOB_RUNTIME_ENV``). Its output goes to a log file that outlives it. States, as in
Ray: PENDING (its env is being set up), RUNNING, then SUCCEEDED, FAILED or STOPPED.

The records live in the head (they outlive the entrypoint and any client), at most
:data:`MAX_JOBS` of them; finished ones go first when there are more.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable

from .._packages import PackageCache
from .._runtime_env import PACKAGE_SCHEME, check
from .._runtime_env_setup import pip_environment

#: job records kept (finished ones are dropped, oldest first, beyond it)
MAX_JOBS = 1000
#: how long a stopped job has between SIGTERM and SIGKILL (Ray's default is 3 s)
STOP_GRACE = float(os.environ.get("ARAY_JOB_STOP_GRACE_SECONDS", "3"))
#: what a submission id may be: it names a log file
SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


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
        session_dir: the head node's session folder (logs go to its ``logs/``).
        address: what the entrypoint's ``aray.init()`` connects to (``ARAY_ADDRESS``).
        packages_dir: where the head keeps uploaded packages (see
            :mod:`aray._head.packages`).

    Example:
        >>> import tempfile
        >>> manager = JobManager(tempfile.mkdtemp(), "127.0.0.1:6379", tempfile.mkdtemp())
        >>> manager.list()
        []
    """

    def __init__(self, session_dir: str, address: str, packages_dir: str) -> None:
        self.session_dir = session_dir
        self.address = address
        self.packages_dir = packages_dir
        self.jobs: dict[str, dict] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._stopping: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self.logs_dir = os.path.join(session_dir, "logs")

    # --- requests --------------------------------------------------------------------------
    def submit(self, entrypoint: str, submission_id: str | None = None,
               runtime_env: dict | None = None, metadata: dict | None = None,
               entrypoint_num_cpus: float = 0, entrypoint_num_gpus: float = 0,
               entrypoint_resources: dict | None = None) -> str:
        """Record a job and start it; returns its submission id.

        Raises JobError for an empty entrypoint, a taken or malformed id, or a runtime
        env whose folders were not uploaded.
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
        for name, value in (("entrypoint_num_cpus", entrypoint_num_cpus),
                            ("entrypoint_num_gpus", entrypoint_num_gpus)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise JobError(f"{name} must be a number >= 0")
        now = time.time()
        self.jobs[submission_id] = {
            "type": "SUBMISSION", "submission_id": submission_id, "job_id": submission_id,
            "entrypoint": entrypoint, "status": JobStatus.PENDING,
            "message": "Job has not started yet.", "start_time": int(now * 1000),
            "end_time": None, "driver_exit_code": None, "runtime_env": env,
            "metadata": dict(metadata or {}), "entrypoint_num_cpus": entrypoint_num_cpus,
            "entrypoint_num_gpus": entrypoint_num_gpus,
            "entrypoint_resources": dict(entrypoint_resources or {}), "driver_pid": None,
        }
        self._bound()
        task = asyncio.get_running_loop().create_task(self._run(submission_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return submission_id

    def info(self, submission_id: str) -> dict:
        """The job's record (Ray's ``JobDetails`` fields); JobError 404 if unknown."""
        job = self.jobs.get(submission_id)
        if job is None:
            raise JobError(f"no job with submission id {submission_id!r}: `aray job list` "
                           "shows the jobs of this cluster", status=404)
        return dict(job, status=str(job["status"]))

    def list(self) -> list[dict]:
        """Every job's record, oldest first."""
        return [self.info(s) for s in self.jobs]

    def log_path(self, submission_id: str) -> str:
        self.info(submission_id)  # (404 if unknown)
        return os.path.join(self.logs_dir, f"job-driver-{submission_id}.log")

    def logs(self, submission_id: str) -> str:
        """All the job's output so far."""
        try:
            with open(self.log_path(submission_id), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    async def stop(self, submission_id: str) -> bool:
        """SIGTERM the job's processes, then SIGKILL after the grace period; False if it
        was not running."""
        job = self.jobs.get(submission_id)
        self.info(submission_id)
        assert job is not None
        if job["status"].is_terminal():
            return False
        self._stopping.add(submission_id)
        proc = self._procs.get(submission_id)
        if proc is None:  # still setting up its env: it will not start
            return True
        # the whole group: the shell may be gone while the command it ran ignores SIGTERM
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if _group_alive(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
        return True

    def delete(self, submission_id: str) -> bool:
        """Forget an ended job and remove its log; JobError if it still runs."""
        job = self.info(submission_id)
        if not JobStatus(job["status"]).is_terminal():
            raise JobError(f"job {submission_id!r} is {job['status']}: stop it before "
                           "deleting it (`aray job stop`)")
        try:
            os.unlink(self.log_path(submission_id))
        except FileNotFoundError:
            pass
        del self.jobs[submission_id]
        return True

    async def aclose(self) -> None:
        """Stop every running job (the head is stopping)."""
        await asyncio.gather(*(self.stop(s) for s, j in self.jobs.items()
                               if not j["status"].is_terminal()), return_exceptions=True)

    # --- running -----------------------------------------------------------------------------
    async def _run(self, submission_id: str) -> None:
        job = self.jobs[submission_id]
        os.makedirs(self.logs_dir, exist_ok=True)
        log_path = os.path.join(self.logs_dir, f"job-driver-{submission_id}.log")
        try:
            cwd, env = await asyncio.to_thread(self._prepare, job["runtime_env"])
        except Exception as exc:  # the job fails, saying why
            self._end(job, JobStatus.FAILED, f"its runtime env could not be set up: {exc}")
            return
        if submission_id in self._stopping:
            self._end(job, JobStatus.STOPPED, "Job was stopped before it started.")
            return
        env.update(ARAY_ADDRESS=self.address, ARAY_SUBMISSION_ID=submission_id,
                   ARAY_JOB_RUNTIME_ENV=json.dumps(job["runtime_env"]))
        with open(log_path, "ab") as log:
            try:
                # a session of its own: stop() signals the entrypoint and what it started
                proc = await asyncio.create_subprocess_shell(
                    job["entrypoint"], stdin=asyncio.subprocess.DEVNULL, stdout=log,
                    stderr=asyncio.subprocess.STDOUT, cwd=cwd, env=env,
                    start_new_session=True)
            except OSError as exc:
                self._end(job, JobStatus.FAILED, f"the entrypoint could not start: {exc}")
                return
        self._procs[submission_id] = proc
        job.update(status=JobStatus.RUNNING, message="Job is currently running.",
                   driver_pid=proc.pid)
        code = await proc.wait()
        del self._procs[submission_id]
        job["driver_exit_code"] = code
        if submission_id in self._stopping:
            deadline = time.monotonic() + STOP_GRACE + 1  # (stop() ends what is left)
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self._end(job, JobStatus.STOPPED, "Job was intentionally stopped.")
        elif code == 0:
            self._end(job, JobStatus.SUCCEEDED, "Job finished successfully.")
        else:
            last = self.logs(submission_id).strip().splitlines()[-1:] or [""]
            why = ("the command was not found" if code == 127 else
                   f"it was killed by signal {-code}" if code < 0 else f"its last line: {last[0]}")
            self._end(job, JobStatus.FAILED,
                      f"Job entrypoint command failed with exit code {code}: {why}")

    def _prepare(self, env: dict) -> tuple[str | None, dict]:
        """On a thread: the entrypoint's working directory and environment variables."""
        variables = {**os.environ, **env.get("env_vars", {})}
        # `python` in the entrypoint is the node's interpreter, which has aray
        variables["PATH"] = os.pathsep.join(
            [os.path.dirname(sys.executable), *filter(None, [variables.get("PATH", "")])])
        cache = PackageCache(os.path.join(self.session_dir, "runtime_resources", "packages"))
        fetch: Callable[[str], bytes] = self._read_package
        paths = [cache.get(uri[len(PACKAGE_SCHEME):], fetch) for uri in env.get("py_modules", [])]
        if env.get("pip"):
            from .._runtime_env import setup_timeout

            paths.insert(0, pip_environment(
                env["pip"]["packages"], os.path.join(self.session_dir, "runtime_resources",
                                                     "pip"), setup_timeout(env)))
        cwd = None
        if env.get("working_dir"):
            cwd = cache.get(env["working_dir"][len(PACKAGE_SCHEME):], fetch)
            paths.insert(0, cwd)
        if paths:
            variables["PYTHONPATH"] = os.pathsep.join(
                [*paths, *filter(None, [variables.get("PYTHONPATH", "")])])
        return cwd, variables

    def _read_package(self, name: str) -> bytes:
        path = os.path.join(self.packages_dir, name)
        if os.path.dirname(os.path.abspath(path)) != os.path.abspath(self.packages_dir):
            raise ValueError(f"{name!r} is not a package name")
        with open(path, "rb") as f:
            return f.read()

    def _end(self, job: dict, status: JobStatus, message: str) -> None:
        job.update(status=status, message=message, end_time=int(time.time() * 1000))

    def _bound(self) -> None:
        finished = [s for s, j in self.jobs.items() if j["status"].is_terminal()]
        for submission_id in finished[:max(0, len(self.jobs) - MAX_JOBS)]:
            self.delete(submission_id)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass  # it has exited meanwhile
