"""Shared fixtures: one local cluster for the in-process tests, a runner for scripts
that need a cluster of their own (other resources, process lifecycle, stdout), the polling
helpers tests wait with (never sleep-then-assert), and a check that the session leaves no
process, store or spill file behind."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from _leaks import MARK, LeakWatch

import aray


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def session_root():
    """Session directories (logs, sockets) of every cluster the tests start go to one
    temporary root, removed at the end; short, since unix socket paths are limited."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="aray-t-")
    os.environ["ARAY_SESSION_ROOT"] = root
    os.environ[MARK] = root  # inherited by what the tests start: see _leaks.py
    yield root
    shutil.rmtree(root, ignore_errors=True)


LEAKS: LeakWatch | None = None


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(session_root):
    """Fail the session if a process it started, a store in /dev/shm of one of its sessions
    or a spill file outlives it; says after which test each leftover was first seen.

    Set up after :func:`session_root` and before any cluster fixture, so it looks once
    every cluster has stopped and before the root goes."""
    global LEAKS
    LEAKS = LeakWatch(mark=session_root)
    LEAKS.add_root(session_root)
    yield LEAKS
    found, LEAKS = LEAKS.leftovers(), None
    assert not found, "left behind by the test session:\n  " + "\n  ".join(found)


@pytest.fixture(autouse=True)
def _look_for_leftovers(request, no_leftovers):
    """After each test, note what runs and which sessions exist (see :func:`no_leftovers`)."""
    no_leftovers.test = request.node.nodeid
    yield
    no_leftovers.look()


def watch_root(root: str) -> None:
    """Have the leak check watch the sessions of ``root``, a session root of a test's own,
    before the test removes it (its stores live on in /dev/shm if its nodes leak them)."""
    if LEAKS is not None:
        LEAKS.add_root(root)
        LEAKS.look()


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _timed_out(timeout: float, what, value) -> AssertionError:
    return AssertionError(f"timed out after {timeout} s waiting for {what} (last value: "
                          f"{value!r})")


def _no_longer_true(what, value) -> AssertionError:
    return AssertionError(f"no longer true: {what} (value: {value!r})")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = ""):
    """Poll ``predicate()`` until it returns something truthy and return that; fail the test
    with ``message`` (and the last value seen) if ``timeout`` seconds pass first.

    Example:
        >>> wait_until(lambda: os.path.exists(path), 5, message="the file to appear")
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, message or predicate, value)
        time.sleep(interval)


def stays_true(predicate, duration: float, interval: float = 0.05, message: str = ""):
    """Poll ``predicate()`` for ``duration`` seconds and fail the test with ``message`` at
    the first falsy value: how a test shows that something does not happen.

    Example:
        >>> stays_true(lambda: proc.poll() is None, 0.5, message="the process keeps running")
    """
    deadline = time.monotonic() + duration
    while True:
        value = predicate()
        if not value:
            raise _no_longer_true(message or predicate, value)
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


async def _value(predicate):
    value = predicate()
    return await value if inspect.isawaitable(value) else value


async def async_wait_until(predicate, timeout: float = 10.0, interval: float = 0.05,
                           message: str = ""):
    """:func:`wait_until` for async tests: ``predicate()`` may return an awaitable, and the
    loop runs between polls.

    Example:
        >>> await async_wait_until(lambda: len(received) == 3, message="three messages")
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await _value(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, message or predicate, value)
        await asyncio.sleep(interval)


async def async_stays_true(predicate, duration: float, interval: float = 0.05,
                           message: str = ""):
    """:func:`stays_true` for async tests (``predicate()`` may return an awaitable).

    Example:
        >>> await async_stays_true(lambda: not link.closed, 0.2, message="the link stays up")
    """
    deadline = time.monotonic() + duration
    while True:
        value = await _value(predicate)
        if not value:
            raise _no_longer_true(message or predicate, value)
        if time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.05)
    return [p for p in alive if _alive(p)]


def task_state(ref) -> str | None:
    """The state (``RUNNING``, ``FINISHED``...) the cluster's task table shows for the task
    whose result ``ref`` is; None while the table has no row for it (tasks report their
    states in batches, every 0.1 s).

    Example:
        >>> wait_until(lambda: task_state(ref) == "RUNNING", message="the task to start")
    """
    from aray.util.state import list_tasks

    task_id = ref.hex()[:-8]  # an object id is its task's id and a 4-byte index
    rows = list_tasks(filters=[("task_id", "=", task_id)])
    return rows[0]["state"] if rows else None


def runtime_pids() -> list[int]:
    """The node process of this process's runtime and everything under it."""
    from aray import _global

    core = _global.core()
    node_pid = core.cluster.proc.pid
    return [node_pid, *descendants(node_pid)]


@pytest.fixture(scope="session")
def cluster(session_root):
    """A 2-CPU local cluster shared by the in-process tests; checked for leaks at the end."""
    aray.init(num_cpus=2, resources={"Custom": 4})
    yield
    pids = runtime_pids()
    aray.shutdown()
    assert wait_gone(pids) == [], "processes left behind by aray.shutdown()"


PRELUDE = """
import json, os, sys, time, asyncio
import psutil
import aray

def runtime_pids():
    from aray import _global
    node = _global.core().cluster.proc.pid
    return [node] + [p.pid for p in psutil.Process(node).children(recursive=True)]

def report_pids():
    # one write: a worker's line, printed by the runtime's thread, cannot land inside it
    sys.stdout.write("PIDS " + json.dumps(runtime_pids()) + "\\n")
    sys.stdout.flush()
"""

class Echo:
    """Stands for ``sys.stdout`` or ``sys.stderr`` in a script and keeps a copy of what is
    written, so that the script can wait for its workers' lines (which the runtime's thread
    prints) instead of sleeping before it exits.

    Example:
        >>> out, err = echo_output()
        >>> wait_until(lambda: "hello" in out.text(), message="the worker's line")
    """

    def __init__(self, stream) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def text(self) -> str:
        """Everything written so far."""
        return "".join(self.parts)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def echo_output() -> tuple[Echo, Echo]:
    """Put an :class:`Echo` in place of ``sys.stdout`` and of ``sys.stderr``; returns both."""
    sys.stdout, sys.stderr = Echo(sys.stdout), Echo(sys.stderr)
    return sys.stdout, sys.stderr


#: the polling helpers and Echo, for scripts the tests run in interpreters of their own
SCRIPT_HELPERS = "\n\n".join(inspect.getsource(f)
                               for f in (_timed_out, wait_until, stays_true, Echo, echo_output))
PRELUDE += "\n" + SCRIPT_HELPERS


class ScriptResult:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.pids: list[int] = []
        for line in proc.stdout.splitlines():
            if line.startswith("PIDS "):
                self.pids = json.loads(line[5:])

    def check(self) -> ScriptResult:
        assert self.returncode == 0, f"script failed:\n{self.stdout}\n{self.stderr}"
        return self

    def assert_no_leftovers(self) -> None:
        assert self.pids, "the script did not report its runtime's pids"
        assert wait_gone(self.pids) == [], f"processes left behind: {self.pids}"


@pytest.fixture
def run_script(tmp_path):
    """Run a Python script (with PRELUDE) in a fresh interpreter; returns ScriptResult."""

    def run(code: str, timeout: float = 60, expect_ok: bool = True) -> ScriptResult:
        path = tmp_path / "script.py"
        path.write_text(PRELUDE + textwrap.dedent(code))
        proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                              timeout=timeout, cwd=tmp_path, env={**os.environ})
        result = ScriptResult(proc)
        return result.check() if expect_ok else result

    return run
