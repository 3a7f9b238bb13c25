"""A local cluster: the node process (head + node agent) that ``aray.init()`` starts.

Parent side, :class:`LocalCluster` starts a node process (:data:`NODE_BOOT`) in its own session, sends
it its configuration (including the token) on stdin, reads one "ready" line with the
addresses from its stdout, and keeps stdin open. The child treats EOF on stdin as "my driver
is gone" and shuts down, so even a SIGKILLed driver leaves no process behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time

from .store.shm import ShmDirectory, default_root

log = logging.getLogger("aray")

# not "/tmp/aray": a directory named like the package would shadow it for code run in /tmp
DEFAULT_SESSION_ROOT = os.path.join("/tmp", "aray-sessions")


def session_root() -> str:
    """Where session directories live: ``$ARAY_SESSION_ROOT`` or /tmp/aray-sessions."""
    return os.environ.get("ARAY_SESSION_ROOT") or DEFAULT_SESSION_ROOT


#: session directories of finished sessions kept for their logs
KEEP_SESSIONS = 20


def new_session_dir() -> str:
    """Create ``<root>/session_<time>_<pid>_<rand>`` with ``sockets/`` and ``logs/``.

    The logs of the last :data:`KEEP_SESSIONS` finished sessions are kept; older ones go.
    """
    prune_sessions(KEEP_SESSIONS)
    name = time.strftime("session_%Y-%m-%d_%H-%M-%S") + f"_{os.getpid()}_{secrets.token_hex(2)}"
    path = os.path.join(session_root(), name)
    os.makedirs(os.path.join(path, "sockets"), mode=0o700)
    os.makedirs(os.path.join(path, "logs"), mode=0o700)
    return path


def _alive(pid_file: str) -> bool:
    try:
        with open(pid_file) as f:
            os.kill(int(f.read()), 0)
        return True
    except (OSError, ValueError):
        return False


def prune_sessions(keep: int) -> None:
    """Remove all but the newest ``keep`` session directories whose node process is gone,
    and the shared-memory stores of every node that died without removing its own."""
    import shutil

    shm = default_root()
    try:
        stores = [n for n in os.listdir(shm) if n.startswith("aray-session_")]
    except OSError:
        stores = []
    for name in stores:
        path = os.path.join(shm, name)
        if not _alive(os.path.join(path, NODE_PID_FILE)):
            shutil.rmtree(path, ignore_errors=True)
    root = session_root()
    try:
        names = sorted(n for n in os.listdir(root) if n.startswith("session_"))
    except FileNotFoundError:
        return
    for name in names[:-keep] if keep else names:
        path = os.path.join(root, name)
        if not _alive(os.path.join(path, "node.pid")):
            shutil.rmtree(path, ignore_errors=True)


def read_cluster(session_dir: str) -> dict:
    """The addresses and token of the daemon cluster whose session this is."""
    with open(os.path.join(session_dir, "cluster.json")) as f:
        info = json.load(f)
    with open(os.path.join(session_dir, "token")) as f:
        info["token"] = f.read().strip()
    return info


def running_clusters() -> list[dict]:
    """Daemon clusters (``aray start``) of this machine whose node process is alive."""
    found = []
    try:
        names = sorted(os.listdir(session_root()))
    except FileNotFoundError:
        return found
    for name in names:
        path = os.path.join(session_root(), name)
        if not name.startswith("session_") or os.path.islink(path):
            continue
        try:
            info = read_cluster(path)
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue
        found.append(info)
    return found


def find_cluster(address: str | None) -> dict:
    """The running cluster for ``address`` ("auto"/None: the latest; "host:port": by head).

    Raises ConnectionError with what to do when there is none on this machine.
    """
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


#: in a node's store directory: the node's pid, so a store left by a killed node is found
NODE_PID_FILE = ".node.pid"


def store_dir_for(session_dir: str) -> str:
    return os.path.join(default_root(), "aray-" + os.path.basename(session_dir))


class LocalCluster:
    """The driver's handle on the node process it started."""

    def __init__(self, *, resources: dict, object_store_memory: int | None = None,
                 token: str | None = None, daemon: bool = False,
                 head_tcp: str | None = None, ip: str = "127.0.0.1", join: str = "",
                 dashboard: dict | None = None) -> None:
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
                       # {"host": ..., "port": ... or None for the default}; None: no dashboard
                       "dashboard": dashboard}
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def spawn(self) -> None:
        err = open(os.path.join(self.session_dir, "logs", "node.err"), "ab")
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

    def stop(self, timeout: float = 10.0) -> None:
        """Close the lifeline and wait for the node process (SIGKILL after ``timeout``)."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.proc = None


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
    from ._head.server import Head
    from .node.agent import NodeAgent

    loop = asyncio.get_running_loop()
    store = ShmDirectory(config["store_dir"], os.path.join(config["session_dir"], "spill"))
    store.create()
    for pid_file in (os.path.join(config["session_dir"], "node.pid"),
                     os.path.join(config["store_dir"], NODE_PID_FILE)):
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
    # joining an existing cluster: no head here, and the agent dials the cluster's head
    joining = config.get("join", "")
    head = None if joining else Head(config["token"])
    # a node of a cluster others may join (aray start) listens on TCP for other nodes
    tcp_host = (config.get("ip") or "127.0.0.1") if (config.get("daemon") or joining) else ""
    agent = dashboard = None
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            if head is not None:
                head_address = await head.start(config["head_address"])
                head_tcp = (await head.server.listen(config["head_tcp"])
                            if config.get("head_tcp") else "")
            else:
                head_address = head_tcp = joining
            agent = NodeAgent(token=config["token"], session_dir=config["session_dir"],
                              store_dir=config["store_dir"], resources=config["resources"],
                              head_address=head_address, ip=config.get("ip") or "127.0.0.1",
                              shared=bool(config.get("daemon")), tcp_host=tcp_host)
            node_address = await agent.start(config["node_address"])
            dashboard_url = ""
            if head is not None:
                head.local_node_id = agent.node_id
                if config.get("dashboard"):
                    from ._head.dashboard import Dashboard

                    dashboard = Dashboard(head, config["token"])
                    dashboard_url = await dashboard.start(config["dashboard"]["host"],
                                                          config["dashboard"]["port"])
        except (OSError, ConnectionError, ValueError) as exc:
            os.write(1, (json.dumps({"error": str(exc)}) + "\n").encode())
            return
        ready = {"head_address": head_address, "head_tcp": head_tcp,
                 "node_address": node_address, "node_id": agent.node_id, "pid": os.getpid(),
                 "session_dir": config["session_dir"], "store_dir": config["store_dir"],
                 "is_head": head is not None, "tcp_host": tcp_host,
                 "dashboard_url": dashboard_url}
        if config.get("daemon"):
            _write_private(os.path.join(config["session_dir"], "cluster.json"), json.dumps(ready))
        os.write(1, (json.dumps(ready) + "\n").encode())
        _detach_stdout(config["session_dir"])
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(agent.stopped.wait())]
        if not config.get("daemon"):
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            waits.append(asyncio.ensure_future(reader.read()))  # EOF: the driver is gone
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
    finally:
        if dashboard is not None:
            await dashboard.aclose()
        if agent is not None:
            await agent.aclose()
        if head is not None:
            await head.aclose()
        store.remove_all()


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
