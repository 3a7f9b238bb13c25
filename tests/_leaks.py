"""What a test session leaves behind: processes, shared-memory stores, spill files and the
scratch directories of clients.

:class:`LeakWatch` looks after every test at what the session has started (the pytest
process's descendants, and any process whose environment carries the session's mark, which
finds nodes that ``aray start`` detached) and at the session directories of the session
roots the tests use. At the end it says what survived, naming the test after which each
leftover was first seen, and then removes it: it ends only processes it saw as the
session's own, by pid, and removes only stores and spill files of the session's sessions.

Example:
    >>> watch = LeakWatch(mark="run-1")
    >>> watch.add_root(root)            # a session root a test uses
    >>> watch.look("test_x.py::test_y")  # after each test
    >>> watch.leftovers()                # at the end: [] when nothing leaked
    []
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import psutil

#: the environment variable whose value marks the processes of one test session
MARK = "ARAY_TEST_RUN"
SHM = "/dev/shm"


class LeakWatch:
    """Records, test by test, the processes and sessions a test session makes; see the
    module docstring.

    Args:
        mark: the value of :data:`MARK` in this session's environment (inherited by the
            processes the tests start).
    """

    def __init__(self, mark: str) -> None:
        self.mark = mark
        self.roots: list[str] = []
        self.pids: dict[int, tuple[str, str]] = {}  # pid -> (test first seen after, cmdline)
        self.sessions: dict[str, tuple[str, str]] = {}  # session name -> (test, its dir)
        self.test = "session start"
        self.began = time.time()
        # stores made before this session began are someone else's
        self.stores_before = set(self._stores())
        self.stores = dict.fromkeys(self.stores_before, "")

    def add_root(self, root: str) -> None:
        """Watch the session directories of ``root`` too (a root of a test's own)."""
        if root not in self.roots:
            self.roots.append(root)

    def look(self, test: str | None = None) -> None:
        """Note the processes and session directories there are now, as seen after
        ``test`` (default: the current one, :attr:`test`)."""
        test = test or self.test
        for proc in self._processes():
            try:
                if proc.pid not in self.pids:
                    self.pids[proc.pid] = (test, " ".join(proc.cmdline())[:160])
                root = proc.environ().get("ARAY_SESSION_ROOT")
            except psutil.Error:
                continue
            if root:
                self.add_root(root)
        for root in self.roots:
            for name in _listdir(root):
                path = os.path.join(root, name)
                if name.startswith("session_") and not os.path.islink(path):
                    self.sessions.setdefault(name, (test, path))
        for name in self._stores():
            self.stores.setdefault(name, test)

    def leftovers(self, grace: float = 10.0) -> list[str]:
        """What survives now, one line each, after up to ``grace`` seconds for the
        session's processes to exit; removes it (ends those processes, by pid)."""
        self.look("the end of the session")
        left = self._surviving_processes(grace)
        found = [f"process {p.pid} ({self.pids[p.pid][1]}), first seen after "
                 f"{self.pids[p.pid][0]}" for p in left]
        for proc in left:
            _end(proc)
        for path, test in self._own_stores():
            found.append(f"store {path}, first seen after {test}")
            shutil.rmtree(path, ignore_errors=True)
        for path, test in self._spill_files():
            found.append(f"spill file {path}, of a session first seen after {test}")
            os.remove(path)
        for path in self._client_dirs():
            found.append(f"client scratch directory {path}")
            shutil.rmtree(path, ignore_errors=True)
        return found

    def _client_dirs(self) -> list[str]:
        """Scratch directories of clients (``aray-client-<pid>-...`` in the temporary
        directory) made since the session began by one of its processes, or by a process
        that has ended (a driver the tests ran, whose pid the watch may not have seen)."""
        root = tempfile.gettempdir()
        found = []
        for name in _listdir(root):
            parts = name.split("-")
            if not (name.startswith("aray-client-") and len(parts) > 3 and parts[2].isdigit()):
                continue
            path, pid = os.path.join(root, name), int(parts[2])
            try:
                made = os.stat(path).st_mtime
            except OSError:
                continue
            if made >= self.began and (self._ours(pid) or not psutil.pid_exists(pid)):
                found.append(path)
        return found

    def _processes(self) -> list[psutil.Process]:
        procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
        for proc in psutil.process_iter():
            if proc.pid in procs or proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get(MARK) == self.mark:
                    procs[proc.pid] = proc
            except psutil.Error:
                pass  # gone, or not ours to read
        return list(procs.values())

    def _surviving_processes(self, grace: float) -> list[psutil.Process]:
        deadline = time.monotonic() + grace
        while True:  # polls: a process may still be on its way out
            alive = [p for p in self._processes() if p.pid in self.pids and _alive(p)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)

    def _stores(self) -> list[str]:
        return [n for n in _listdir(SHM) if n.startswith("aray-session_")]

    def _own_stores(self) -> list[tuple[str, str]]:
        """Stores left in /dev/shm by this session's nodes: named for one of its sessions,
        or recording (``.node.pid``) or named for (``session_<time>_<pid>_``) one of its
        processes."""
        own = []
        for name in self._stores():
            if name in self.stores_before:
                continue
            session = name[len("aray-"):]
            if (session in self.sessions or self._ours(_node_pid(os.path.join(SHM, name)))
                    or self._ours(_creator_pid(session))):
                own.append((os.path.join(SHM, name), self.stores.get(name, "the end")))
        return own

    def _ours(self, pid: int | None) -> bool:
        """Whether ``pid`` is the pytest process or one this session started."""
        return pid is not None and (pid == os.getpid() or pid in self.pids)

    def _spill_files(self) -> list[tuple[str, str]]:
        files = []
        for test, path in self.sessions.values():
            for folder, _, names in os.walk(os.path.join(path, "spill")):
                files += [(os.path.join(folder, n), test) for n in names]
        return files


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _end(proc: psutil.Process) -> None:
    try:
        proc.terminate()
        proc.wait(5)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.Error:
        pass


def _node_pid(store: str) -> int | None:
    try:
        with open(os.path.join(store, ".node.pid")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _creator_pid(session: str) -> int | None:
    """The pid in a session's name: ``session_<date>_<time>_<pid>_<rand>``."""
    parts = session.split("_")
    try:
        return int(parts[3])
    except (IndexError, ValueError):
        return None
