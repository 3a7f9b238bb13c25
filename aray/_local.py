"""A local cluster: the node process (head + node agent) that ``aray.init()`` starts.

Parent side, :class:`LocalCluster` starts a node process (:data:`NODE_BOOT`) in its own
session, sends it its configuration (including the token) on stdin, reads one "ready" line with the
addresses from its stdout, and keeps stdin open. The child treats EOF on stdin as "my driver
is gone" and shuts down, so even a SIGKILLed driver leaves no process behind.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from typing import Any

from .store.shm import ShmDirectory, default_root

log = logging.getLogger("aray")


def default_session_root() -> str:
    """The session root when ``ARAY_SESSION_ROOT`` is not set: ``/tmp/aray-<uid>``.

    One per user, so that no user's driver ever reads another user's session. Not
    ``$XDG_RUNTIME_DIR``: that is a small tmpfs (often a tenth of RAM, shared with the
    user's other runtime files), gone at logout and unset for services, cron and many
    containers, while a session holds spill files and logs that must outlive a login.
    Not ``/tmp/aray``: a directory named like the package would shadow it for code run in
    /tmp.

    Example:
        >>> default_session_root() == f"/tmp/aray-{os.getuid()}"
        True
    """
    return os.path.join("/tmp", f"aray-{os.getuid()}")


class UnsafePathError(PermissionError):
    """A session root, session directory, token file or store directory that another user
    owns, or could change: aray will not use it."""


def check_private(path: str, kind: str, fd: int | None = None) -> os.stat_result:
    """Refuse ``path`` unless it is this user's and nobody else can write to it.

    ``kind`` names it in the message ("session root", "token file", ...). The path itself
    is examined, not what it points to (``lstat``; with ``fd``, the file opened from it):
    a symbolic link planted in place of a directory is refused, not followed. Raises
    :class:`UnsafePathError`, a PermissionError whose message is one line: the path, its
    owner and mode, and what to do; returns the stat result when the path is fine.
    FileNotFoundError goes to the caller.

    Example:
        >>> import tempfile
        >>> check_private(tempfile.mkdtemp(), "session root").st_uid == os.getuid()
        True
        >>> check_private("/tmp", "session root")
        Traceback (most recent call last):
        ...
        aray._local.UnsafePathError: refusing to use the session root /tmp (owner: ...
    """
    st = os.fstat(fd) if fd is not None else os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        problem = "it is a symbolic link"
    elif st.st_uid != os.getuid():
        problem = "it is not yours"
    elif st.st_mode & 0o022:
        problem = "others can write to it"
    else:
        return st
    raise UnsafePathError(
        f"refusing to use the {kind} {path} (owner: {_user_name(st.st_uid)}; mode "
        f"{stat.S_IMODE(st.st_mode):04o}): {problem}, and aray uses only what is yours and "
        "writable by you alone. Remove it if you did not make it, or set ARAY_SESSION_ROOT "
        "to a directory of your own.")


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except KeyError:
        return f"uid {uid}"


def read_private(path: str, kind: str) -> str:
    """The text of a file that :func:`check_private` accepts (not followed if a symlink).

    Example:
        >>> path = os.path.join(new_session_dir(), "token")
        >>> _write_private(path, "a secret")
        >>> read_private(path, "token file")
        'a secret'
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        check_private(path, kind)  # a symlink: raises with the usual message
        raise
    with os.fdopen(fd) as f:
        check_private(path, kind, f.fileno())
        return f.read()


def session_root(create: bool = False) -> str:
    """Where session directories live: ``$ARAY_SESSION_ROOT``, else
    :func:`default_session_root`; refused (:func:`check_private`) when it is not private.

    With ``create``, a missing root is made, mode 0700. Without, a missing root is returned
    as it is: there are no sessions in it.

    Example:
        >>> session_root(create=True) == os.environ.get("ARAY_SESSION_ROOT",
        ...                                             default_session_root())
        True
    """
    root = os.environ.get("ARAY_SESSION_ROOT") or default_session_root()
    if create:
        try:
            os.makedirs(root, mode=0o700)
        except FileExistsError:
            pass
    try:
        check_private(root, "session root")
    except FileNotFoundError:
        pass
    return root


def session_dirs() -> list[str]:
    """Every session directory under the session root, oldest first, each one checked with
    :func:`check_private`.

    Example:
        >>> all(os.path.basename(d).startswith("session_") for d in session_dirs())
        True
    """
    root = session_root()
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    paths = []
    for name in names:
        # session_latest (a symlink aray start makes, and its temp name) points to one of them
        if name.startswith("session_") and not name.startswith("session_latest"):
            path = os.path.join(root, name)
            check_private(path, "session directory")
            paths.append(path)
    return paths


#: session directories of finished sessions kept for their logs
KEEP_SESSIONS = 20


def new_session_dir() -> str:
    """Create ``<root>/session_<time>_<pid>_<rand>`` with ``sockets/`` and ``logs/``, all
    mode 0700; fails if the directory exists already.

    The logs of the last :data:`KEEP_SESSIONS` finished sessions are kept; older ones go.

    Example:
        >>> oct(os.stat(new_session_dir()).st_mode & 0o777)
        '0o700'
    """
    root = session_root(create=True)
    prune_sessions(KEEP_SESSIONS)
    name = time.strftime("session_%Y-%m-%d_%H-%M-%S") + f"_{os.getpid()}_{secrets.token_hex(2)}"
    path = os.path.join(root, name)
    os.mkdir(path, 0o700)  # FileExistsError rather than a directory someone else made
    check_private(path, "session directory")
    os.mkdir(os.path.join(path, "sockets"), 0o700)
    os.mkdir(os.path.join(path, "logs"), 0o700)
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie.

    Example:
        >>> pid_alive(os.getpid())
        True
    """
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but psutil may not look at it
        return True


def _recorded_pid(pid_file: str) -> int | None:
    """The pid in a node's pid file; None if there is none (yet) or it is not a number."""
    try:
        with open(pid_file) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def node_files(session_dir: str) -> list[str]:
    """What the node of ``session_dir`` has outside its logs while it runs: its
    shared-memory store, its spill directory and (``aray start``) its ``cluster.json``.

    Example:
        >>> [os.path.basename(p) for p in node_files("/tmp/r/session_x")]
        ['aray-session_x', 'spill', 'cluster.json']
    """
    return [store_dir_for(session_dir), os.path.join(session_dir, "spill"),
            os.path.join(session_dir, "cluster.json")]


def node_process_alive(session_dir: str) -> bool:
    """Whether the node process that recorded its pid in ``session_dir`` still runs.

    Example:
        >>> node_process_alive(new_session_dir())  # no node ever ran there
        False
    """
    pid = _recorded_pid(os.path.join(session_dir, "node.pid"))
    return pid is not None and pid_alive(pid)


def remove_node_files(session_dir: str) -> bool:
    """Remove the store (in /dev/shm), the spill directory and ``cluster.json`` of the node
    of ``session_dir`` once that node is dead; keep its logs. True if anything was removed.

    All it needs is the session directory: the node records its pid in ``node.pid`` there
    before it makes its store, and its store's path follows from the session's name
    (:func:`store_dir_for`). It is safe to call for any session directory, at any time and
    from any process of this user: it does nothing while that pid is alive, nor before the
    node wrote it (a node starting), nor for a directory that does not exist. A store
    directory that is not this user's is left alone; a session directory that
    :func:`check_private` refuses raises UnsafePathError.

    Example:
        >>> remove_node_files(new_session_dir())  # no node ever ran there
        False
    """
    import shutil

    try:
        check_private(session_dir, "session directory")
    except FileNotFoundError:
        return False
    pid = _recorded_pid(os.path.join(session_dir, "node.pid"))
    if pid is None or pid_alive(pid):
        return False
    removed = False
    store, spill, cluster_json = node_files(session_dir)
    for directory in (store, spill):
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            continue
        # /dev/shm is everyone's: a directory of that name made by another user is not ours
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            shutil.rmtree(directory, ignore_errors=True)
            removed = True
    if os.path.lexists(cluster_json):
        _remove_file(cluster_json)
        removed = True
    return removed


def _remove_orphan_stores() -> None:
    """Stores in /dev/shm of this user's nodes that died, whose session directory is gone
    or under another session root: the pid file inside each says whose it is."""
    import shutil

    shm = default_root()
    try:
        names = [n for n in os.listdir(shm) if n.startswith("aray-session_")]
    except OSError:
        return
    for name in names:
        path = os.path.join(shm, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue  # another user's
        pid = _recorded_pid(os.path.join(path, NODE_PID_FILE))
        if pid is not None and not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def prune_sessions(keep: int) -> None:
    """Remove what dead nodes left (see :func:`remove_node_files`), and all but the newest
    ``keep`` session directories whose node process is gone.

    Example:
        >>> prune_sessions(KEEP_SESSIONS)
    """
    import shutil

    sessions = session_dirs()
    for path in sessions:
        remove_node_files(path)
    _remove_orphan_stores()
    for path in sessions[:-keep] if keep else sessions:
        pid = _recorded_pid(os.path.join(path, "node.pid"))
        if pid is None or not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def read_cluster(session_dir: str) -> dict:
    """The addresses and token of the cluster whose session this is, from its
    ``cluster.json`` and (``aray start``) ``token`` files, refused unless private (see
    :func:`check_private`). ``daemon`` is False for the cluster of one program
    (``aray.init()``), whose token is in its ``cluster.json``.

    Raises FileNotFoundError for a session without a running node, or one that began
    before nodes of ``aray.init()`` wrote their ``cluster.json``.

    Example:
        >>> read_cluster(new_session_dir())
        Traceback (most recent call last):
        ...
        FileNotFoundError: [Errno 2] No such file or directory: '.../cluster.json'
    """
    info = json.loads(read_private(os.path.join(session_dir, "cluster.json"), "cluster file"))
    if not info.get("token"):  # a program's own cluster keeps it in cluster.json
        info["token"] = read_private(os.path.join(session_dir, "token"), "token file").strip()
    return info


def _live_nodes() -> list[dict]:
    """The nodes of this machine whose node process is alive, as :func:`read_cluster`
    reads them, oldest session first."""
    found = []
    for path in session_dirs():
        try:
            info = read_cluster(path)
            alive = pid_alive(int(info["pid"]))
        except FileNotFoundError:
            continue  # a node that stopped, or one still starting
        except (ValueError, KeyError, TypeError):
            continue  # a file cut short by a node killed while writing it
        if alive:
            found.append(info)
    return found


def running_clusters() -> list[dict]:
    """Daemon clusters (``aray start``) of this machine whose node process is alive.

    Example:
        >>> isinstance(running_clusters(), list)
        True
    """
    return [info for info in _live_nodes() if info.get("daemon", True)]


def program_clusters() -> list[dict]:
    """The clusters that programs of this machine started for themselves with
    ``aray.init()`` and that still run, oldest first; each says its program's pid
    (``driver_pid``).

    Example:
        >>> all(not c["daemon"] for c in program_clusters())
        True
    """
    programs = [info for info in _live_nodes() if not info.get("daemon", True)]
    return sorted(programs, key=lambda c: (c.get("started_at", 0), c["session_dir"]))


def login_url(dashboard_url: str, token: str) -> str:
    """The link that logs in to a dashboard: it trades the token for a session cookie.

    Example:
        >>> login_url("http://127.0.0.1:8265", "abc")
        'http://127.0.0.1:8265/?token=abc'
    """
    return f"{dashboard_url}/?token={token}"


def cluster_address(info: dict) -> str:
    """What ``aray.init(address=...)`` and ``--address`` take to reach the cluster of a
    node's record: its head's ``HOST:PORT``, or the session directory of a cluster that
    listens on no TCP port (a program's own).

    Example:
        >>> cluster_address({"head_tcp": "tcp://127.0.0.1:6379", "session_dir": "/tmp/s"})
        '127.0.0.1:6379'
        >>> cluster_address({"head_tcp": "", "session_dir": "/tmp/s"})
        '/tmp/s'
    """
    head_tcp = info.get("head_tcp") or ""
    return head_tcp.split("://", 1)[-1] if head_tcp else info["session_dir"]


def find_cluster(address: str | None) -> dict:
    """The running cluster for ``address`` ("auto"/None: the latest; "host:port": by head;
    a session directory: the cluster whose node runs there).

    Raises ConnectionError with what to do when there is none on this machine, and
    ValueError for a Ray Client address (``ray://``).
    """
    if address is not None and address.startswith("ray://"):
        raise ray_client_address_error(address)
    if address is not None and os.path.isabs(address) and os.path.isdir(address):
        for info in _live_nodes():
            if info["session_dir"] == address.rstrip("/"):
                return info
        raise ConnectionError(f"no aray cluster runs in the session {address}: its node has "
                              "stopped (its logs are there)")
    clusters = running_clusters()
    if address in (None, "auto"):
        if not clusters:
            raise ConnectionError(
                "no running aray cluster was found on this machine (address='auto'). Start one "
                "with `aray start --head`, or call aray.init() without an address to start a "
                "cluster for this program only.")
        # the newest head; a node that joined another head serves as well
        return max(clusters, key=lambda c: (c.get("is_head", True), c["session_dir"]))
    from ._link import parse_address

    kind, host, port = parse_address(address)
    host = "127.0.0.1" if host in ("localhost", "0.0.0.0") else host
    # a node of this machine in that cluster (its head first): its agent serves the driver
    for info in sorted(clusters, key=lambda c: not c.get("is_head", True)):
        if info.get("head_tcp"):
            _, h, p = parse_address(info["head_tcp"])
            if p == port and (h == host or h == "0.0.0.0"):
                return info
    raise ConnectionError(
        f"no aray cluster at {address} runs on this machine. Check the address, or start a "
        f"head there with `aray start --head --port {port}`.")


def ray_client_address_error(address: str) -> ValueError:
    """The error for a Ray Client address (``ray://HOST:PORT``): what to write instead.

    Example:
        >>> print(ray_client_address_error("ray://10.0.0.5:10001"))  # doctest: +ELLIPSIS
        'ray://10.0.0.5:10001' is a Ray Client address. aray's client mode ... \
aray.init(address="aray://10.0.0.5:6379", token=...)...
    """
    from ._link import parse_address

    _, host, port = parse_address(address)
    # Ray Client listens on a port of its own (10001); aray's clients use the head's
    port = 6379 if port == 10001 else port
    return ValueError(
        f"{address!r} is a Ray Client address. aray's client mode takes aray://HOST:PORT, "
        "where PORT is the head's own port (the one `aray start --head --port` opened, 6379 "
        "by default: aray has no separate client port like Ray's 10001), and the cluster's "
        f'token: aray.init(address="aray://{host}:{port}", token=...), or set ARAY_TOKEN '
        "instead of passing token=. See docs/cluster.md, section Client mode.")


def _cluster_key(info: dict) -> str:
    """What the nodes of one cluster share: the head's TCP address (a program's own
    cluster has none, and is a cluster by itself)."""
    return info.get("head_tcp") or info["session_dir"]


def _describe(info: dict) -> str:
    if not info.get("daemon", True):
        return (f"the cluster of the program with pid {info.get('driver_pid', '?')} (session "
                f"{info['session_dir']})")
    address = (info.get("head_tcp") or "").split("://", 1)[-1]
    return f"the cluster of `aray start` at {address} (session {info['session_dir']})"


def newest_local_cluster() -> tuple[dict, str]:
    """The cluster a command such as ``aray status`` asks when given no address: the one
    ``aray start`` started (as ``address="auto"`` finds it), else the newest one a
    program started for itself with ``aray.init()``. Also returns a note that says which
    was chosen and which others run, when there are others ("" when there are none).

    Raises ConnectionError, saying what to do, when no cluster runs on this machine.

    Example:
        >>> import aray
        >>> _ = aray.init(num_cpus=1, ignore_reinit_error=True)
        >>> info, note = newest_local_cluster()
        >>> sorted(k for k in info if k in ("head_address", "node_address", "token"))
        ['head_address', 'node_address', 'token']
    """
    daemons, programs = running_clusters(), program_clusters()
    if daemons:
        chosen = find_cluster("auto")
    elif programs:
        chosen = programs[-1]
    else:
        raise ConnectionError(
            "no aray cluster runs on this machine: neither one that `aray start --head` "
            "started nor one that a program started with aray.init() (under the session root "
            f"{session_root()}; set ARAY_SESSION_ROOT as that program has it). For a cluster "
            "elsewhere, pass --address HOST:PORT and --token.")
    others: dict[str, dict] = {}
    for info in daemons + programs:
        if _cluster_key(info) != _cluster_key(chosen):
            others.setdefault(_cluster_key(info), info)
    if not others:
        return chosen, ""
    return chosen, (
        f"{len(others) + 1} aray clusters run on this machine; this is "
        f"{_describe(chosen)}. The others: "
        + "; ".join(_describe(info) for info in others.values())
        + ". Choose one with --address HOST:PORT (a cluster of `aray start`) or --address "
        "SESSION_DIR (any).")


def reach_cluster(address: str | None, token: str | None = None) -> dict:
    """Where a command-line tool finds the cluster it asks, and with which token.

    ``address`` None or "auto": :func:`newest_local_cluster`; a session directory: the
    cluster whose node runs there; "HOST:PORT": the cluster of the head there, through
    this machine's session if it runs here, else over TCP (a token is needed then).
    ``token`` given wins; else the session's own; else ``$ARAY_TOKEN``. Returns the
    node's fields (``head_address``, ``node_address``: "" when the cluster has no node
    here...), with ``token`` and ``note`` (see :func:`newest_local_cluster`).

    Example:
        >>> reach_cluster("10.0.0.5:6379", "secret")["head_address"]
        'tcp://10.0.0.5:6379'
    """
    if address in (None, "", "auto"):
        info, note = newest_local_cluster()
    elif os.path.isdir(address):
        try:
            info, note = read_cluster(address.rstrip("/")), ""
            alive = pid_alive(int(info["pid"]))
        except FileNotFoundError:
            alive = False
        if not alive:
            raise ConnectionError(f"no aray cluster runs in the session {address}: its node "
                                  "has stopped (its logs are there)")
    else:
        try:
            info, note = find_cluster(address), ""
        except ConnectionError:
            return _remote_cluster(address, token)
    return {**info, "token": token or info["token"], "note": note}


def _remote_cluster(address: str, token: str | None) -> dict:
    """A head that runs on no node of this machine: dialled over TCP, with a token."""
    from ._link import parse_address

    _, host, port = parse_address(address)
    token = token or os.environ.get("ARAY_TOKEN")
    if not token:
        raise ValueError(f"no token for the cluster at {address}, which runs on no node of this "
                         "machine: pass --token or set ARAY_TOKEN (`aray start --head` wrote it "
                         "in the token file of its session directory)")
    return {"head_address": f"tcp://{host}:{port}", "node_address": "", "token": token,
            "note": "", "session_dir": "", "dashboard_url": "", "daemon": True}


#: in a node's store directory: the node's pid, so a store left by a killed node is found
NODE_PID_FILE = ".node.pid"


def store_dir_for(session_dir: str) -> str:
    """The shared-memory store directory of the node of ``session_dir``.

    Example:
        >>> store_dir_for("/tmp/aray-0/session_x")
        '/dev/shm/aray-session_x'
    """
    return os.path.join(default_root(), "aray-" + os.path.basename(session_dir))


class LocalCluster:
    """The driver's handle on the node process it started.

    ``daemon``: a node of ``aray start``, which serves many programs and others find through
    its ``cluster.json``. ``lifeline`` (default: not a daemon): the node stops when the pipe
    to its stdin closes, that is when this process ends, however it ends (``aray.init()``,
    ``aray start --block``).
    """

    def __init__(self, *, resources: dict, object_store_memory: int | None = None,
                 token: str | None = None, daemon: bool = False,
                 head_tcp: str | None = None, ip: str = "127.0.0.1", join: str = "",
                 dashboard: dict | None = None, lifeline: bool | None = None,
                 labels: dict | None = None, storage: str = "",
                 head_reconnect_timeout: float = 60.0, min_nodes: int = 1,
                 agent_port: int = 0) -> None:
        self.session_dir = new_session_dir()
        self.store_dir = store_dir_for(self.session_dir)
        self.token = token or secrets.token_hex(16)
        self.head_address = f"unix:{self.session_dir}/sockets/head.sock"
        self.node_address = f"unix:{self.session_dir}/sockets/node.sock"
        self.config = {"token": self.token, "session_dir": self.session_dir,
                       "store_dir": self.store_dir, "resources": resources,
                       "object_store_memory": object_store_memory,
                       "head_address": self.head_address, "node_address": self.node_address,
                       "daemon": daemon, "head_tcp": head_tcp, "ip": ip, "join": join,
                       "lifeline": not daemon if lifeline is None else lifeline,
                       # {"host": ..., "port": ... or None for the default}; None: no dashboard
                       "dashboard": dashboard,
                       "labels": dict(labels or {}),  # the node's own (see node/labels.py)
                       # a head's Redis URL, to outlive it (see aray/_head/recovery.py)
                       "storage": storage, "head_reconnect_timeout": head_reconnect_timeout,
                       # the head is ready (/readyz) once this many nodes are alive
                       "min_nodes": min_nodes,
                       # the agent's TCP port (0: any free one)
                       "agent_port": agent_port}
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def spawn(self) -> None:
        # the node process writes to it for as long as it lives: closed when it is reaped
        err = open(os.path.join(self.session_dir, "logs", "node.err"), "ab")  # noqa: SIM115
        try:
            # -P: the driver's working directory must not shadow the installed package
            # (a source checkout's aray/ lacks aray.node and aray.store)
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-c", NODE_BOOT], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        finally:
            err.close()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.config).encode() + b"\n")
        self.proc.stdin.flush()

    async def wait_ready(self, timeout: float = 60.0) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                line = await loop.run_in_executor(None, self.proc.stdout.readline)
        except TimeoutError:
            line = b""
        if not line:
            self.stop()
            raise RuntimeError(
                "the aray node process did not start. Its log says:\n" + self._log_tail())
        self.info = json.loads(line)
        self.proc.stdout.close()
        if "error" in self.info:
            self.stop()
            raise OSError(self.info["error"])
        return self.info

    def detach(self) -> None:
        """Leave a daemon node process running on its own (``aray start``)."""
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc = None

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.session_dir, "logs", "node.err"), "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def close_lifeline(self) -> None:
        """Tell the node process to stop (it exits when its stdin closes); does not wait."""
        proc = self.proc
        try:
            if proc is not None and proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Close the lifeline and wait for the node process (SIGKILL after ``timeout``)."""
        proc = self.proc
        if proc is None:
            return
        self.close_lifeline()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.proc = None
        # what a node killed here, or one that crashed, could not remove itself
        remove_node_files(self.session_dir)


# --- the node process ---------------------------------------------------------------------

#: what the node process runs (``python -P -c NODE_BOOT``). It raises its soft limit of
#: open files to the hard one (its workers inherit it), then starts the worker template
#: first, before importing aray: the template's own imports of the worker module then run at
#: the same time as the node's, instead of after them, and the first worker is ready sooner.
NODE_BOOT = """\
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft != hard:  # a node holds a descriptor per link: take all the system allows
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
import multiprocessing
from multiprocessing import forkserver
multiprocessing.get_context("forkserver").set_forkserver_preload(["aray._worker"])
forkserver.ensure_running()
from aray._local import node_main
node_main()
"""


def node_main() -> None:
    """The node process (see :data:`NODE_BOOT`): run head + node agent until stdin closes or
    SIGTERM."""
    config = json.loads(sys.stdin.readline())
    logging.basicConfig(
        filename=os.path.join(config["session_dir"], "logs", "node.log"), level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s -- %(message)s")
    asyncio.run(_run_node(config))


async def _run_node(config: dict) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    node = _NodeProcess(config)
    try:
        try:
            ready = await node.start()
        except (OSError, ConnectionError, ValueError) as exc:
            os.write(1, (json.dumps({"error": str(exc)}) + "\n").encode())
            return
        _write_private(os.path.join(config["session_dir"], "cluster.json"),
                       json.dumps(_cluster_record(config, ready)))
        os.write(1, (json.dumps(ready) + "\n").encode())
        _detach_stdout(config["session_dir"])
        await node.wait_for_end(stop)
    finally:
        await node.aclose()


def _cluster_record(config: dict, ready: dict) -> dict:
    """What a running node writes in its session's ``cluster.json`` (mode 0600), for the
    command line and ``address="auto"`` to find it. A program's own node (``aray.init()``)
    writes its cluster's token there too, since no ``aray start`` wrote a token file, and
    its program's pid: ``aray status`` and the other commands reach it that way."""
    daemon = bool(config.get("daemon"))
    record = {**ready, "daemon": daemon, "started_at": time.time()}
    if not daemon:
        record.update(token=config["token"], driver_pid=os.getppid())
    return record


class _NodeProcess:
    """What a node process runs: its object store, a head unless it joins a cluster, the
    node agent, and the dashboard if asked for."""

    def __init__(self, config: dict) -> None:
        from ._head.server import Head

        self.config = config
        self.store = ShmDirectory(config["store_dir"],
                                  os.path.join(config["session_dir"], "spill"))
        self.store_made = False  # a directory of that name that is not ours must stay as it is
        # joining an existing cluster: no head here, and the agent dials the cluster's head
        self.joining = config.get("join", "")
        self.head = None if self.joining else Head(
            config["token"], packages_dir=os.path.join(config["session_dir"], "packages"),
            storage=config.get("storage", ""),
            reconnect_grace=config.get("head_reconnect_timeout", 60.0))
        # a node of a cluster others may join (aray start) listens on TCP for other nodes
        self.tcp_host = ((config.get("ip") or "127.0.0.1")
                         if (config.get("daemon") or self.joining) else "")
        self.agent: Any = None
        self.dashboard: Any = None

    def _make_store(self) -> None:
        config, store = self.config, self.store
        # the pid first: remove_node_files() goes by it, and leaves a starting node alone
        _write_private(os.path.join(config["session_dir"], "node.pid"), str(os.getpid()))
        try:
            store.create()  # fails if the store or spill directory exists already
        except FileExistsError:
            check_private(store.path, "object store directory")  # says whose it is
            raise
        self.store_made = True
        check_private(store.path, "object store directory")
        _write_private(os.path.join(store.path, NODE_PID_FILE), str(os.getpid()))

    async def start(self) -> dict:
        """Start everything; returns what the starting process is told (its ready line)."""
        from .node.agent import NodeAgent

        config, head = self.config, self.head
        self._make_store()
        if head is not None:
            from ._head.jobs import JobManager
            from ._health import head_probes

            await head.restore()  # (a head with storage: what an earlier one left)
            # before the head listens: a node back after a restart may tell of its jobs
            head.set_job_manager(JobManager(head))

            head.server.probes.update(head_probes(head, config.get("min_nodes") or 1))
            head_address = await head.start(config["head_address"])
            head_tcp = (await head.server.listen(config["head_tcp"])
                        if config.get("head_tcp") else "")
        else:
            head_address = head_tcp = self.joining
        self.agent = NodeAgent(
            token=config["token"], session_dir=config["session_dir"],
            store_dir=config["store_dir"], resources=config["resources"],
            head_address=head_address, ip=config.get("ip") or "127.0.0.1",
            shared=bool(config.get("daemon")), tcp_host=self.tcp_host,
            labels=config.get("labels") or {}, tcp_port=config.get("agent_port") or 0,
            head_reconnect_timeout=config.get("head_reconnect_timeout", 60.0))
        self._add_probes()  # before they listen: a probe is never refused
        node_address = await self.agent.start(config["node_address"])
        dashboard_url = ""
        if head is not None:
            head.local_node_id = self.agent.node_id
            if config.get("dashboard"):
                from ._head.dashboard import Dashboard

                self.dashboard = Dashboard(head, config["token"])
                dashboard_url = await self.dashboard.start(config["dashboard"]["host"],
                                                           config["dashboard"]["port"])
        return {"head_address": head_address, "head_tcp": head_tcp,
                "node_address": node_address, "node_id": self.agent.node_id,
                "pid": os.getpid(), "session_dir": config["session_dir"],
                "store_dir": config["store_dir"], "is_head": head is not None,
                "tcp_host": self.tcp_host, "dashboard_url": dashboard_url}

    def _add_probes(self) -> None:
        """The health checks of the agent's server (see aray._health; the head's are set
        before it starts), and the warning of a store larger than /dev/shm holds, in the
        node's log."""
        from ._health import agent_probes
        from ._shmcheck import store_warning

        self.agent.server.probes.update(agent_probes(self.agent))
        warning = store_warning(self.config["resources"],
                                self.config.get("object_store_memory") is not None)
        if warning:
            log.warning("%s", warning)

    async def wait_for_end(self, stop: asyncio.Event) -> None:
        """Until a signal (``stop``), the agent stops, or the lifeline (stdin) closes."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()),
                                            asyncio.ensure_future(self.agent.stopped.wait())]
        if self.config["lifeline"]:
            reader = asyncio.StreamReader()
            await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            waits.append(asyncio.ensure_future(reader.read()))  # EOF: the driver is gone
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()

    async def aclose(self) -> None:
        try:
            for part in (self.dashboard, self.agent, self.head):
                if part is not None:
                    await part.aclose()
        finally:
            if self.store_made:
                # a spill still copying in a thread would write its file after the
                # directory is gone, or into it while it is being removed: let it finish
                await asyncio.get_running_loop().shutdown_default_executor()
                self.store.remove_all()
                _remove_file(os.path.join(self.config["session_dir"], "cluster.json"))


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_private(path: str, text: str) -> None:
    """Write a file only this user can read (the token, the cluster's addresses)."""
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def _detach_stdout(session_dir: str) -> None:
    """After the ready line, stdout goes to the log: the driver no longer reads it."""
    fd = os.open(os.path.join(session_dir, "logs", "node.out"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.close(fd)
