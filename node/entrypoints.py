"""The entrypoints of submitted jobs that the head placed on this node (`aray job submit`).

For each :class:`~aray._protocol.StartEntrypoint`: hold the entrypoint's resources (a lease
of the node's scheduler, whose worker idles meanwhile, so tasks cannot take them), set up
its runtime env (packages from the head, unpacked in this node's cache; a pip environment
on ``PYTHONPATH``), then run the command in a process group of its own with its output in
``logs/job-driver-ID.log``, and tell the head when it started and how it ended.
``StopEntrypoint`` sends the group SIGTERM, then SIGKILL after the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from aray import _protocol as P
from aray._link import CONTROL_TIMEOUT, Link
from aray._packages import PackageCache
from aray._runtime_env import PACKAGE_SCHEME, setup_timeout
from aray._runtime_env_client import download_package
from aray._runtime_env_setup import pip_environment

from . import lease_events as E

log = logging.getLogger("aray.node")

class _Hold:
    """The entrypoint as a caller of the lease scheduler: granted a lease, it holds the
    entrypoint's resources until it gives the lease back."""

    closed = False

    def __init__(self) -> None:
        self.granted: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def send(self, msg) -> None:
        if isinstance(msg, P.LeaseGranted) and not self.granted.done():
            self.granted.set_result(msg.worker_id)
        elif isinstance(msg, P.LeaseInfeasible):
            log.warning("a job's entrypoint waits for resources: %s", msg.message)

    send_if_open = send


#: the entrypoints that ended that a node remembers, for a head that restarts
MAX_ENDED = 1_000


class Entrypoints:
    """The entrypoints running on one node.

    Args:
        session_dir: the node's session folder.
        head: the link to the head (None while there is none).
        feed: hands an event to the node's lease scheduler.
        spawn_task: runs a coroutine as a task the agent owns.
    """

    def __init__(self, session_dir: str, head: Callable[[], Link | None],
                 feed: Callable, spawn_task: Callable) -> None:
        self.session_dir = session_dir
        self._head = head
        self._feed = feed
        self._spawn_task = spawn_task
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self.ended: dict[str, list] = {}  # the last MAX_ENDED that ended: [code, message]
        self._stopping: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _tell_head(self, msg) -> None:
        head = self._head()
        if head is not None:
            head.send_if_open(msg)

    def _on_StartEntrypoint(self, link: Link, msg: P.StartEntrypoint) -> None:
        self._loop = asyncio.get_running_loop()  # (downloads run there)
        self._spawn_task(self._run(msg), f"entrypoint {msg.submission_id}")

    def _on_StopEntrypoint(self, link: Link, msg: P.StopEntrypoint) -> None:
        self._stopping.add(msg.submission_id)
        proc = self._procs.get(msg.submission_id)
        if proc is not None:
            self._spawn_task(_stop(proc.pid, msg.grace), f"stop {msg.submission_id}")

    async def _run(self, msg: P.StartEntrypoint) -> None:
        sid = msg.submission_id
        hold = worker_id = None
        try:
            if any(v > 0 for v in msg.resources.values()):
                hold = _Hold()
                self._feed(E.LeaseRequested(hold, 0, dict(msg.resources),
                                            f"the entrypoint of job {sid}", "", False))
                worker_id = await hold.granted
            code, message = await self._start_and_wait(msg)
        except Exception as exc:  # it did not start: the head marks it FAILED, saying why
            code, message = None, f"{type(exc).__name__}: {exc}"
        finally:
            if hold is not None:
                if worker_id is not None:
                    self._feed(E.LeaseReturned(hold, worker_id))
                else:
                    self._feed(E.CallerGone(hold))
        self._stopping.discard(sid)
        self.ended[sid] = [code, message]  # (told again to a head that restarts)
        while len(self.ended) > MAX_ENDED:
            del self.ended[next(iter(self.ended))]
        self._tell_head(P.EntrypointEnded(sid, code, message))

    def held(self) -> dict:
        """What a node tells a restarted head of its entrypoints: those that run, and the
        last ones that ended (id -> [exit code, message]), whose news may have been lost
        with the link to the head that went away."""
        return {"running": list(self._procs), "ended": dict(self.ended)}

    async def _start_and_wait(self, msg: P.StartEntrypoint) -> tuple[int | None, str]:
        sid = msg.submission_id
        try:
            cwd, env = await asyncio.to_thread(self._prepare, msg.runtime_env)
        except Exception as exc:
            return None, f"its runtime env could not be set up: {exc}"
        if sid in self._stopping:
            return None, "stopped before it started"
        env.update(msg.env)
        env["ARAY_ADDRESS"] = self.session_dir  # its aray.init() joins through this node
        logs = os.path.join(self.session_dir, "logs")
        os.makedirs(logs, exist_ok=True)
        log_file = f"job-driver-{sid}.log"
        with open(os.path.join(logs, log_file), "ab") as out:
            try:
                # a session of its own: a stop signals the entrypoint and what it started
                proc = await asyncio.create_subprocess_shell(
                    msg.entrypoint, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT, cwd=cwd, env=env,
                    start_new_session=True)
            except OSError as exc:
                return None, f"the entrypoint could not start: {exc}"
        self._procs[sid] = proc
        self._tell_head(P.EntrypointStarted(sid, proc.pid, log_file))
        code = await proc.wait()
        if sid in self._stopping:  # what it started may outlive the shell a moment
            deadline = time.monotonic() + CONTROL_TIMEOUT
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        del self._procs[sid]
        return code, _last_line(os.path.join(logs, log_file))

    def _prepare(self, env: dict) -> tuple[str | None, dict]:
        """On a thread: the entrypoint's working directory and environment variables."""
        variables = {**os.environ, **env.get("env_vars", {})}
        # `python` in the entrypoint is the node's interpreter, which has aray
        variables["PATH"] = os.pathsep.join(
            [os.path.dirname(sys.executable), *filter(None, [variables.get("PATH", "")])])
        cache = PackageCache(os.path.join(self.session_dir, "runtime_resources", "packages"))
        paths = [cache.get(uri[len(PACKAGE_SCHEME):], self._fetch)
                 for uri in env.get("py_modules", [])]
        if env.get("pip"):
            paths.insert(0, pip_environment(
                env["pip"]["packages"], os.path.join(self.session_dir, "runtime_resources",
                                                     "pip"), setup_timeout(env)))
        cwd = None
        if env.get("working_dir"):
            cwd = cache.get(env["working_dir"][len(PACKAGE_SCHEME):], self._fetch)
            paths.insert(0, cwd)
        if paths:
            variables["PYTHONPATH"] = os.pathsep.join(
                [*paths, *filter(None, [variables.get("PYTHONPATH", "")])])
        return cwd, variables

    def _fetch(self, name: str) -> bytes:
        """On the setup's thread: a package's bytes, from the head."""
        head = self._head()
        if head is None or self._loop is None:
            raise ConnectionError("this node has no link to the head")
        return asyncio.run_coroutine_threadsafe(download_package(head, name),
                                                self._loop).result()

    async def aclose(self) -> None:
        """Stop every entrypoint of this node (it is stopping)."""
        await asyncio.gather(*(_stop(p.pid, 1.0) for p in self._procs.values()),
                             return_exceptions=True)


async def _stop(pgid: int, grace: float) -> None:
    """SIGTERM the whole group (the shell may be gone while the command it ran ignores
    it), then SIGKILL what is left after ``grace`` seconds."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # it has exited meanwhile


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
