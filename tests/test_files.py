"""The files of a session: session roots and directories only this user controls, private
spill files that go when their node stops or dies, and a token that stays off terminals."""

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest
from conftest import PRELUDE, SCRIPT_HELPERS, descendants, wait_gone, watch_root
from test_cli import free_port, login_answer

ARAY = [sys.executable, "-m", "aray"]
NOBODY = pwd.getpwnam("nobody").pw_uid

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")


def run(args, root, timeout=60):
    """A command (a python script when args is a str) with ARAY_SESSION_ROOT=root."""
    if isinstance(args, str):
        args = [sys.executable, "-c", "import os, sys, time, aray\n" + textwrap.dedent(args)]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ARAY_SESSION_ROOT": str(root)})


TRY_INIT = """
for address in %r:
    try:
        aray.init(address=address, num_cpus=1) if address is None else aray.init(address=address)
        print("STARTED", address)
        aray.shutdown()
    except PermissionError as exc:
        print("REFUSED", address, exc)
"""


def refusals(root, addresses=(None, "auto")) -> list[str]:
    """How ``aray.init(address=...)`` refuses, for each address, in a fresh interpreter."""
    out = run(TRY_INIT % (addresses,), root).stdout
    assert "STARTED" not in out, out
    return [line for line in out.splitlines() if line.startswith("REFUSED ")]


class Bait:
    """What a planted session points to: sockets that count who connects, and a process
    that a stop would signal."""

    def __init__(self, where) -> None:
        self.unix = []
        for name in ("head", "node"):
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(where / f"{name}.sock"))
            s.listen()
            s.setblocking(False)
            self.unix.append(s)
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.tcp.setblocking(False)
        self.proc = subprocess.Popen(["sleep", "300"])

    def cluster_json(self, where, session_dir) -> dict:
        port = self.tcp.getsockname()[1]
        return {"head_address": f"unix:{where}/head.sock", "head_tcp": f"tcp://127.0.0.1:{port}",
                "node_address": f"unix:{where}/node.sock", "node_id": "f" * 32,
                "pid": self.proc.pid, "session_dir": session_dir,
                "store_dir": "/dev/shm/aray-planted-nonexistent", "is_head": True,
                "tcp_host": "127.0.0.1", "dashboard_url": ""}

    def contacted(self) -> bool:
        for s in [*self.unix, self.tcp]:
            try:
                s.accept()[0].close()
                return True
            except BlockingIOError:
                pass
        return False

    def close(self) -> None:
        for s in [*self.unix, self.tcp]:
            s.close()
        self.proc.kill()
        self.proc.wait()


def plant_session(root, bait, where, owner: int) -> str:
    """A session directory with cluster.json and token, as `aray start` leaves them."""
    session = os.path.join(root, "session_2026-01-01_00-00-00_1_beef")
    os.mkdir(root, 0o700)
    os.mkdir(session, 0o700)
    with open(os.path.join(session, "cluster.json"), "w") as f:
        json.dump(bait.cluster_json(where, session), f)
    with open(os.path.join(session, "token"), "w") as f:
        f.write("planted-token")
    for path in (root, session, *(os.path.join(session, n) for n in os.listdir(session))):
        os.chown(path, owner, -1)
    return session


def test_the_default_session_root_is_per_user():
    from aray._local import default_session_root

    env = {k: v for k, v in os.environ.items() if k != "ARAY_SESSION_ROOT"}
    out = subprocess.run([sys.executable, "-c", "from aray._local import session_root; "
                          "print(session_root())"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == default_session_root() == f"/tmp/aray-{os.getuid()}"


@needs_root
def test_a_session_root_of_another_user_is_refused_and_nothing_is_sent(tmp_path):
    where = tmp_path / "bait"
    where.mkdir()
    root = str(tmp_path / "root")
    bait = Bait(where)
    try:
        session = plant_session(root, bait, where, NOBODY)
        lines = refusals(root)
        assert len(lines) == 2, lines
        for line in lines:
            assert (f"refusing to use the session root {root} (owner: nobody, uid {NOBODY}; "
                    "mode 0700): it is not yours") in line and "ARAY_SESSION_ROOT" in line
        for command in (["start", "--head", "--port", str(free_port()), "--num-cpus", "1"],
                        ["stop"], ["status"]):
            proc = run([*ARAY, *command], root)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert proc.stderr.count("\n") == 1, proc.stderr  # one line
            assert proc.stderr.startswith(f"aray {command[0]}: refusing to use the session "
                                          f"root {root} (owner: nobody"), proc.stderr
        assert not bait.contacted(), "a refused session's addresses were dialled"
        assert bait.proc.poll() is None, "aray stop signalled a refused session's pid"
        assert os.listdir(root) == [os.path.basename(session)], "a session was made there"
        # the root is ours again, but its session directory (or its token) is not
        os.chown(root, 0, -1)
        lines = refusals(root)
        assert len(lines) == 2 and all(f"the session directory {session} (owner: nobody"
                                       in line for line in lines), lines
        os.chown(session, 0, -1)  # a new cluster needs no cluster.json: only "auto" is left
        (line,) = refusals(root, ("auto",))
        assert f"the cluster file {session}/cluster.json (owner: nobody" in line
        for name in ("cluster.json", "token"):
            os.chown(os.path.join(session, name), 0, -1)
        os.chmod(os.path.join(session, "token"), 0o666)
        (line,) = refusals(root, ("auto",))
        assert f"the token file {session}/token (owner: root, uid 0; mode 0666): others can " \
               "write to it" in line
        assert not bait.contacted() and bait.proc.poll() is None
    finally:
        bait.close()


def test_a_root_others_can_write_to_or_a_symlinked_root_is_refused(tmp_path):
    open_root = tmp_path / "open"
    open_root.mkdir()
    os.chmod(open_root, 0o777)
    lines = refusals(open_root)
    assert len(lines) == 2 and all(
        f"the session root {open_root} (owner: " in line
        and "mode 0777): others can write to it" in line for line in lines), lines
    assert os.listdir(open_root) == []
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    lines = refusals(link)
    assert len(lines) == 2 and all(f"the session root {link} (owner: " in line
                                   and "): it is a symbolic link" in line for line in lines), lines
    assert os.listdir(target) == [], "the symlink was followed"
    proc = run([*ARAY, "stop"], link)
    assert proc.returncode == 1 and "it is a symbolic link" in proc.stderr


def test_a_new_session_is_private():
    top = tempfile.mkdtemp(prefix="aray-n-")  # short: unix socket paths are limited
    root = os.path.join(top, "new", "root")  # made by aray
    proc = run("""
        info = aray.init(num_cpus=1, include_dashboard=False)
        print("SESSION", info["session_dir"])
        aray.shutdown()
    """, root)
    out = proc.stdout
    assert "SESSION" in out, proc.stderr
    session = out.split("SESSION ")[1].split()[0]
    for path in (root, session, os.path.join(session, "logs"),
                 os.path.join(session, "sockets")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    watch_root(root)
    shutil.rmtree(top)


@needs_root
def test_a_store_directory_made_by_another_user_is_refused(session_root):
    from aray._local import LocalCluster
    from aray.aio import node_resources

    cluster = LocalCluster(resources=node_resources(1, 0, None, None))
    os.mkdir(cluster.store_dir, 0o700)  # planted where the node will make its store
    # with a live pid in it, as in a store in use: no pruning removes it
    with open(os.path.join(cluster.store_dir, ".node.pid"), "w") as f:
        f.write(str(os.getpid()))
    os.chown(cluster.store_dir, NOBODY, -1)
    try:
        cluster.spawn()
        import asyncio

        with pytest.raises(OSError) as failed:  # the node's error, as aray.init raises it
            asyncio.run(cluster.wait_ready())
        assert f"refusing to use the object store directory {cluster.store_dir} (owner: " \
               "nobody" in str(failed.value)
        assert cluster.proc is None  # the node process is gone
        assert os.listdir(cluster.store_dir) == [".node.pid"], "the node used it"
    finally:
        cluster.stop()
        shutil.rmtree(cluster.store_dir)


SPILL = """
import numpy as np, stat
from aray import _global

def spill_files(spill):
    return {n: stat.S_IMODE(os.stat(os.path.join(spill, n)).st_mode) for n in os.listdir(spill)}

info = aray.init(num_cpus=1, object_store_memory=16 * 2**20, include_dashboard=False)
core = _global.core()
store, spill, session = core.store.path, core.store.spill_path, info["session_dir"]
# arena objects (8 MiB) and objects in files of their own (256 KiB): both kinds spill
refs = [aray.put(np.full(2**20, i)) for i in range(4)]
refs += [aray.put(np.full(2**15, i)) for i in range(100)]
wait_until(lambda: aray.object_store_stats()["num_spilled"] >= 40, 20,
           message="40 objects to spill")
print("SPILLED", aray.object_store_stats()["num_spilled"])
print("MODES", sorted(set(spill_files(spill).values())), stat.S_IMODE(os.stat(spill).st_mode))
print("ARENA SPILLED",
      any(os.path.getsize(os.path.join(spill, n)) > 2**22 for n in spill_files(spill)))
report_pids()
aray.shutdown()
print("AFTER", os.path.exists(spill), os.path.exists(store), sorted(os.listdir(session)))
# shut down while objects are still on their way to disk
aray.init(num_cpus=1, object_store_memory=16 * 2**20, include_dashboard=False)
core = _global.core()
store, spill = core.store.path, core.store.spill_path
refs = [aray.put(np.full(2**20, i)) for i in range(8)]
report_pids()
aray.shutdown()
print("AFTER BUSY", os.path.exists(spill), os.path.exists(store))
"""


def test_spill_files_are_private_and_go_when_the_node_stops(run_script):
    r = run_script(SPILL, timeout=90)
    assert int(r.stdout.split("SPILLED ")[1].split()[0]) >= 40, r.stdout
    assert "MODES [384] 448" in r.stdout  # 0600 files in a 0700 directory
    assert "ARENA SPILLED True" in r.stdout
    assert "AFTER False False ['logs', 'node.pid', 'sockets']" in r.stdout, r.stdout
    assert "AFTER BUSY False False" in r.stdout
    r.assert_no_leftovers()


def test_aray_stop_removes_a_killed_nodes_store_and_spill_files(tmp_path):
    from aray._local import remove_node_files

    root = tempfile.mkdtemp(prefix="aray-k-")
    proc = None
    try:
        run([*ARAY, "start", "--head", "--port", str(free_port()), "--num-cpus", "1",
             "--object-store-memory", str(16 * 2**20), "--include-dashboard", "false"], root)
        (session,) = [os.path.join(root, n) for n in os.listdir(root) if n != "session_latest"]
        with open(os.path.join(session, "cluster.json")) as f:
            info = json.load(f)
        spill = os.path.join(session, "spill")
        script = tmp_path / "holder.py"
        script.write_text("import sys, time\n" + SCRIPT_HELPERS + textwrap.dedent("""
            import numpy as np, aray
            aray.init(address="auto")
            refs = [aray.put(np.full(2**20, i)) for i in range(6)]
            wait_until(lambda: aray.object_store_stats()["num_spilled"] >= 3, 30,
                       message="three objects to spill")
            print("READY", flush=True)
            time.sleep(120)  # holds its objects until the test kills it
        """))
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "ARAY_SESSION_ROOT": root})
        assert proc.stdout.readline().strip() == "READY"
        assert len(os.listdir(spill)) >= 3 and os.path.isdir(info["store_dir"])
        assert remove_node_files(session) is False  # its node is alive: nothing goes
        assert len(os.listdir(spill)) >= 3 and os.path.isdir(info["store_dir"])
        pids = [info["pid"], *descendants(info["pid"])]
        os.kill(info["pid"], signal.SIGKILL)
        proc.kill()
        proc.wait()
        assert wait_gone(pids) == [], "processes outlived their killed node"
        assert os.path.isdir(info["store_dir"]) and os.listdir(spill)  # what it left
        out = run([*ARAY, "stop"], root).stdout
        assert "Removed the object store files of 1 aray node that had been killed." in out
        assert not os.path.exists(info["store_dir"]) and not os.path.exists(spill)
        assert not os.path.exists(os.path.join(session, "cluster.json"))
        assert os.path.isdir(os.path.join(session, "logs"))  # the logs stay
        assert "nothing to stop" in run([*ARAY, "stop"], root).stdout
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        run([*ARAY, "stop"], root)
        watch_root(root)
        shutil.rmtree(root, ignore_errors=True)


def test_init_prints_no_token_and_returns_the_login_link(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(PRELUDE + textwrap.dedent("""
        from aray import _global
        info = aray.init(num_cpus=1, dashboard_port=0)
        print("INFO", info)
        print("TOKEN", _global.core().token)
        print("URL", info.dashboard_url, info["dashboard_url"])
        print("LOGIN", info.dashboard_login_url)
        report_pids()
        sys.stdin.read()  # until the test has tried the link
        aray.shutdown()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = {}
        while "PIDS" not in lines:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            key, _, rest = line.partition(" ")
            lines[key] = rest.strip()
        token, (url, url_key) = lines["TOKEN"], lines["URL"].split()
        assert url == url_key and url.startswith("http://127.0.0.1:")
        assert token not in lines["INFO"]  # printing what init returns shows no token
        assert lines["LOGIN"] == f"{url}/?token={token}"
        status, cookie = login_answer(lines["LOGIN"])
        assert status == 303 and "aray_session=" in cookie
        out, err = proc.communicate("", timeout=60)
        assert proc.returncode == 0, err
        assert token not in err and "?token=" not in err
        assert f"aray: dashboard at {url}\n" in err
        assert wait_gone(json.loads(lines["PIDS"])) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
