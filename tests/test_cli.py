"""`aray start/stop/status` and drivers that connect to a running cluster."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest
from conftest import descendants, stays_true, wait_gone, wait_until, watch_root

ARAY = [sys.executable, "-m", "aray"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login_answer(link: str) -> tuple[int, str]:
    """The status and Set-Cookie header of a GET of a dashboard link (no redirect followed)."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(link)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        return response.status, response.getheader("Set-Cookie") or ""
    finally:
        conn.close()


def cli(*args, check=True, timeout=60, root=None):
    """``aray ARGS``; with ``root``, under that session root instead of the tests' one."""
    env = None if root is None else {**os.environ, "ARAY_SESSION_ROOT": str(root)}
    proc = subprocess.run([*ARAY, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def driver(code: str, tmp_path, check=True):
    script = tmp_path / "driver.py"
    script.write_text("import os, sys, aray\n" + textwrap.dedent(code))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def head(session_root):
    """A head started with the CLI on a free port; stopped (and checked) afterwards."""
    port = free_port()
    out = cli("start", "--head", "--port", str(port), "--num-cpus", "2",
              "--resources", '{"CustomResource1": 1}', "--node-ip-address", "127.0.0.1").stdout
    assert f"127.0.0.1:{port}" in out and 'aray.init(address="auto")' in out
    pid = int(out.split("(pid ")[1].split(")")[0])
    yield port, pid
    cli("stop")  # (some tests stop it themselves)
    assert wait_gone([pid]) == []


def test_start_status_connect_stop(head, tmp_path, session_root):
    port, pid = head
    token_file = os.path.join(session_root, "session_latest", "token")
    assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"
    status = cli("status").stdout
    assert "1 node alive" in status and "CPU" in status and "0 / 2" in status
    for address in ("auto", f"127.0.0.1:{port}", f"aray://127.0.0.1:{port}"):
        out = driver(f"""
            aray.init(address={address!r})
            @aray.remote
            def f(x):
                return x * x
            print("RESULT", aray.get(f.remote(7)), aray.cluster_resources()["CPU"])
            aray.shutdown()
        """, tmp_path).stdout
        assert "RESULT 49 2.0" in out
    # the cluster outlives its drivers
    assert "1 node alive" in cli("status").stdout
    assert "Object store: 0.0 MiB used" in cli("memory").stdout
    assert "1 node alive" in cli("status", "--address", f"127.0.0.1:{port}").stdout


def test_detached_actors_outlive_their_driver(head, tmp_path):
    driver("""
        aray.init(address="auto", namespace="app")
        @aray.remote
        class Keeper:
            def __init__(self):
                self.n = 0
            def incr(self):
                self.n += 1
                return self.n
        keeper = Keeper.options(name="keeper", lifetime="detached").remote()
        temp = Keeper.options(name="temp").remote()
        assert aray.get([keeper.incr.remote(), temp.incr.remote()]) == [1, 1]
    """, tmp_path)
    out = driver("""
        aray.init(address="auto", namespace="app")
        print("KEEPER", aray.get(aray.get_actor("keeper").incr.remote()))
        try:
            aray.get_actor("temp")
        except ValueError:
            print("TEMP GONE")
        try:
            aray.get_actor("keeper")  # other namespaces do not see it
            aray.get_actor("keeper", namespace="elsewhere")
        except ValueError:
            print("NOT ELSEWHERE")
        aray.kill(aray.get_actor("keeper"))
    """, tmp_path).stdout
    assert "KEEPER 2" in out and "TEMP GONE" in out and "NOT ELSEWHERE" in out


def test_connection_errors_are_clear(head, tmp_path):
    port, _ = head
    out = driver("""
        try:
            aray.init(address="auto", token="not-the-token")
        except aray.exceptions.AuthenticationError as e:
            print("AUTH", e)
        assert not aray.is_initialized()
        try:
            aray.init(address="127.0.0.1:1")
        except ConnectionError as e:
            print("NOCLUSTER", e)
        try:
            aray.init(address="auto", num_cpus=4)
        except ValueError as e:
            print("VALUE", e)
    """, tmp_path).stdout
    assert "AUTH" in out and "wrong cluster token" in out
    assert "NOCLUSTER no aray cluster at 127.0.0.1:1" in out
    assert "VALUE num_cpus" in out
    busy = cli("start", "--head", "--port", str(port), check=False)
    assert busy.returncode == 1 and f"port {port} is in use" in busy.stderr
    bad = cli("status", "--address", f"127.0.0.1:{port}", "--token", "nope", check=False)
    assert bad.returncode == 1 and "wrong cluster token" in bad.stderr


def test_stop_with_nothing_running_and_auto_without_a_cluster(session_root, tmp_path):
    assert "nothing to stop" in cli("stop").stdout
    out = driver("""
        try:
            aray.init(address="auto")
        except ConnectionError as e:
            print("NONE", e)
    """, tmp_path).stdout
    assert "NONE no running aray cluster" in out and "aray start --head" in out


def test_block_stays_in_the_foreground_and_stops_on_sigterm(session_root):
    import signal

    port = free_port()
    proc = subprocess.Popen([*ARAY, "start", "--head", "--block", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "Started an aray head node" in line
        pid = int(line.split("(pid ")[1].split(")")[0])
        stays_true(lambda: proc.poll() is None, 0.5, message="aray start --block runs on")
        assert proc.poll() is None  # still in the foreground
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert wait_gone([pid]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_leaving_driver_frees_its_objects_and_a_stopped_cluster_fails_tasks(head, tmp_path):
    out = driver("""
        import numpy as np, subprocess, time
        aray.init(address="auto")
        ref = aray.put(np.zeros(1_000_000))
        @aray.remote
        def f():
            return 1
        assert aray.get(f.remote()) == 1
        print("USED", aray.object_store_stats()["num_objects"])
        aray.shutdown()
        aray.init(address="auto")
        print("AFTER", aray.object_store_stats()["num_objects"])
        subprocess.run([sys.executable, "-m", "aray", "stop"], check=True, capture_output=True)
        t0 = time.monotonic()
        try:
            aray.get(f.remote(), timeout=30)
        except ConnectionError as e:
            print("FAILED FAST", time.monotonic() - t0 < 10, e)
    """, tmp_path).stdout
    assert "USED 1" in out and "AFTER 0" in out
    assert "FAILED FAST True" in out


def test_jobs_get_their_own_workers_code_and_cleanup(head, tmp_path):
    """Each driver's tasks import its own modules; when it leaves, its workers and every
    object it or they owned go (also when it is killed)."""
    for name, value in (("one", 1), ("two", 2)):
        job_dir = tmp_path / name
        job_dir.mkdir()
        (job_dir / "helpers.py").write_text(f"def value():\n    return {value}\n")
        out = driver("""
            import numpy as np, psutil
            import helpers
            aray.init(address="auto")
            @aray.remote
            def use():
                return helpers.value(), os.getpid()
            @aray.remote
            def make():
                return aray.put(np.ones(1_000_000))  # owned by the worker
            value, pid = aray.get(use.remote())
            inner = aray.get(make.remote())
            assert aray.get(inner).sum() == 1_000_000
            print("VALUE", value, "PID", pid, "OBJECTS", aray.object_store_stats()["num_objects"])
        """, job_dir).stdout
        assert f"VALUE {value}" in out and "OBJECTS 1" in out
        pid = int(out.split("PID ")[1].split()[0])
        assert wait_gone([pid]) == [], "the job's worker outlived its job"
    assert "0 objects" in cli("memory").stdout

    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent("""
        import time, numpy as np, aray
        aray.init(address="auto")
        ref = aray.put(np.ones(1_000_000))
        print("READY", flush=True)
        time.sleep(60)  # holds its object until the test kills it
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    memory = cli("memory").stdout
    assert "1 object " in memory and f"driver pid {proc.pid}" in memory, memory
    proc.kill()
    proc.wait()
    wait_until(lambda: "0 objects" in cli("memory").stdout, 10, interval=0.2,
               message="the killed driver's object to be freed")
    assert "0 objects" in cli("memory").stdout


def _start_blocking(*args, env=None):
    """``aray start ... --block`` in the foreground; returns the process and its node's pid."""
    proc = subprocess.Popen([*ARAY, "start", "--block", *args], stdout=subprocess.PIPE,
                            text=True, env=env)
    line = proc.stdout.readline()
    assert "Started an aray" in line, line
    return proc, int(line.split("(pid ")[1].split(")")[0])


def test_block_fate_shares_with_its_process_and_keeps_the_token_off_its_command_line(
        session_root):
    import signal

    port, secret = free_port(), "cmdline-secret-" + os.urandom(4).hex()
    head, head_node = _start_blocking("--head", "--port", str(port), "--num-cpus", "1",
                                      "--include-dashboard", "false", "--token", secret)
    join = None
    try:
        join, join_node = _start_blocking("--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                                          f"--tok={secret}")
        for proc in (head, join):  # the token went from the command line to the environment
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                cmdline = f.read().decode()
            assert secret not in cmdline and "--block" in cmdline, cmdline
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                assert f"ARAY_TOKEN={secret}".encode() in f.read().split(b"\0")
        assert "2 nodes alive" in cli("status", "--token", secret).stdout
        for proc, node in ((join, join_node), (head, head_node)):
            # the node process, its template process and a worker, ready for jobs
            pids = [node, *wait_until(lambda n=node: len(descendants(n)) >= 2 and descendants(n),
                                      message="the node's workers")]
            proc.kill()  # SIGKILL: no chance to stop the node itself
            proc.wait()
            assert wait_gone(pids, timeout=10) == [], "the node outlived its aray start --block"
        assert "nothing to stop" in cli("stop").stdout
    finally:
        for proc in (join, head):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def test_aray_dashboard_prints_a_link_that_logs_in(session_root):
    port = free_port()
    out = cli("start", "--head", "--port", str(port), "--num-cpus", "1",
              "--dashboard-port", str(free_port())).stdout
    try:
        with open(os.path.join(session_root, "session_latest", "token")) as f:
            token = f.read().strip()
        assert token not in out and "aray dashboard" in out  # `aray start` shows no token
        url = out.split("Dashboard: ")[1].split()[0]
        link = cli("dashboard").stdout.strip()
        assert link == f"{url}/?token={token}"
        assert cli("dashboard", "--address", f"127.0.0.1:{port}").stdout.strip() == link
        status, cookie = login_answer(link)
        assert status == 303 and "aray_session=" in cookie
    finally:
        cli("stop")
    empty = tempfile.mkdtemp(prefix="aray-n-")  # the tests' root may hold a program's cluster
    try:
        none = cli("dashboard", check=False, root=empty)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    assert none.returncode == 1 and "no aray cluster runs on this machine" in none.stderr


#: a program that starts a cluster of its own, runs one task, says where its cluster is and
#: keeps it until its stdin closes
OWN_CLUSTER = """
import json, os, sys, aray
from aray import _global
info = aray.init(num_cpus=1, resources={RESOURCE: 1}, include_dashboard=False)
@aray.remote
def stamped():
    return 1
assert aray.get(stamped.remote()) == 1
print("READY " + json.dumps({"pid": os.getpid(), "session_dir": info["session_dir"],
                             "token": _global.core().token}), flush=True)
sys.stdin.read()
aray.shutdown()
"""


def _start_own_cluster(root, resource: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", OWN_CLUSTER.replace("RESOURCE", repr(resource))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "ARAY_SESSION_ROOT": str(root)})
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    return proc, json.loads(line[6:])


def _end(procs) -> None:
    for proc in procs:
        proc.stdin.close()
    for proc in procs:
        assert proc.wait(timeout=30) == 0


def test_commands_find_a_programs_own_cluster_and_take_address_and_token():
    root = tempfile.mkdtemp(prefix="aray-o-")
    watch_root(root)
    procs = []
    try:
        proc, first = _start_own_cluster(root, "Stamp1")
        procs.append(proc)
        status = cli("status", root=root)
        assert "1 node alive" in status.stdout and "Stamp1" in status.stdout, status.stdout
        assert status.stderr == ""  # one cluster: nothing to say about the choice
        wait_until(lambda: "FINISHED" in cli("list", "tasks", "--filter", "name=stamped",
                                             root=root).stdout, 10, interval=0.2,
                   message="the task in the program's cluster's task table")
        assert "stamped" in cli("summary", "tasks", root=root).stdout
        assert str(first["pid"]) in cli("list", "jobs", root=root).stdout
        assert "Object store: " in cli("memory", root=root).stdout
        trace = os.path.join(root, "trace.json")
        assert "Wrote 1 tasks" in cli("timeline", trace, root=root).stdout
        # --token is taken, and used: a wrong one is refused, the cluster's works
        wrong = cli("list", "actors", "--token=not-the-token", root=root, check=False)
        assert wrong.returncode == 1 and "wrong cluster token" in wrong.stderr, wrong.stderr
        assert "(0 actors)" in cli("list", "actors", f"--token={first['token']}",
                                   root=root).stdout

        proc, second = _start_own_cluster(root, "Stamp2")
        procs.append(proc)
        status = cli("status", root=root)
        assert "Stamp2" in status.stdout and "Stamp1" not in status.stdout  # the newest
        assert "2 aray clusters run on this machine" in status.stderr, status.stderr
        assert (f"this is the cluster of the program with pid {second['pid']}" in status.stderr
                and f"program with pid {first['pid']}" in status.stderr)
        assert "--address SESSION_DIR" in status.stderr
        chosen = cli("list", "nodes", "--address", first["session_dir"], root=root)
        assert "Stamp1" in chosen.stdout and chosen.stderr == ""
        assert "Stamp1" in cli("status", "--address", first["session_dir"], root=root).stdout
    finally:
        _end(procs)
        shutil.rmtree(root, ignore_errors=True)


def test_commands_with_no_cluster_say_so():
    root = tempfile.mkdtemp(prefix="aray-n-")
    try:
        for command in (["status"], ["list", "nodes"], ["summary", "tasks"], ["memory"],
                        ["timeline", os.path.join(root, "t.json")], ["dashboard"]):
            proc = cli(*command, root=root, check=False)
            assert proc.returncode == 1
            assert (f"aray {command[0]}: no aray cluster runs on this machine: neither one that "
                    "`aray start --head` started nor one that a program started with "
                    "aray.init()") in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_commands_reach_a_head_of_another_machine_with_address_and_token(head):
    port, _ = head
    with open(os.path.join(os.environ["ARAY_SESSION_ROOT"], "session_latest", "token")) as f:
        token = f.read().strip()
    elsewhere = tempfile.mkdtemp(prefix="aray-e-")  # no session of that cluster: over TCP
    try:
        address = f"127.0.0.1:{port}"
        nodes = cli("list", "nodes", "--address", address, "--token", token, root=elsewhere)
        assert "CustomResource1: 1" in nodes.stdout and "(1 node)" in nodes.stdout
        assert "1 node alive" in cli("status", "--address", address, "--token", token,
                                     root=elsewhere).stdout
        assert "(0 tasks)" in cli("summary", "tasks", "--address", address, "--token", token,
                                  root=elsewhere).stdout
        memory = cli("memory", "--address", address, "--token", token, root=elsewhere).stdout
        assert memory.startswith("Object stores (every node): 0.0 MiB used"), memory
        none = cli("list", "jobs", "--address", address, root=elsewhere, check=False)
        assert none.returncode == 1 and f"no token for the cluster at {address}" in none.stderr
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
