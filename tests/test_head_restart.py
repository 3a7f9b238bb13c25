"""A head that survives restarts: its tables in a real Redis (Debian's redis-server, started
by the test on a loopback port), the head killed with SIGKILL mid-workload and started
again; the node agents, the driver and a detached actor carry on."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import msgpack
import pytest
from conftest import wait_until
from test_cluster import DRIVER_PRELUDE, Cluster, free_port

from aray._head.group_table import PlacementGroupRecord
from aray._head.recovery import actor_from_row, actor_row, group_from_row, group_row
from aray._head.state import ActorRecord, ActorState

REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="needs Debian's redis-server "
                                 "(apt-get install redis-server; .ci/run installs it)")


def test_rows_round_trip_through_storage():
    actor = ActorRecord("a1", "c", "ns", "j1", {"lifetime": "detached"}, ActorState.ALIVE,
                        {"class_blob": b"\x00pickled", "placement": {"CPU": 1.0}},
                        "tcp://x:1", "w1", "n1", 42, 2)
    assert actor_from_row(_stored(actor_row(actor))) == actor
    group = PlacementGroupRecord("g1", "", "ns", [{"CPU": 1.0}], "PACK", "j1", False,
                                 nodes=["n1"])
    assert group_row(group_from_row(_stored(group_row(group)))) == group_row(group)


def _stored(row: dict) -> dict:
    """A row as Redis gives it back: through msgpack."""
    return msgpack.unpackb(msgpack.packb(row, use_bin_type=True), raw=False,
                           strict_map_key=False)


class Redis:
    """A redis-server of the test's own, on a free loopback port (with a password, if
    given)."""

    def __init__(self, password: str = "") -> None:
        self.dir = tempfile.mkdtemp(prefix="aray-redis-")
        self.port = free_port()
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no",
             *(["--requirepass", password] if password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, password=password or None,
                             socket_connect_timeout=1)
        wait_until(lambda: _pings(client), 10, message="redis-server to answer")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def redis_server():
    server = Redis()
    yield server
    server.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@needs_redis
def test_a_head_killed_and_started_again_takes_its_cluster_back(redis_server, tmp_path):
    c = Cluster()
    c.env.update(ARAY_TOKEN="restart-test-token", ARAY_HEAD_RECONNECT_TIMEOUT="60")
    try:
        head = c.start_head("--num-cpus", "1", "--storage", redis_server.url)
        second = c.join("--num-cpus", "2", "--resources", '{"b": 2}')
        # a driver on the second node: a detached actor with state, and a task running
        # there while the head is killed and started again
        script = tmp_path / "driver.py"
        script.write_text(DRIVER_PRELUDE + textwrap.dedent(f"""
            aray.init(address={second["session_dir"]!r}, namespace="ft")

            @aray.remote(resources={{"b": 1}})
            class Counter:
                def __init__(self):
                    self.n = 0
                def incr(self):
                    self.n += 1
                    return self.n

            @aray.remote(resources={{"b": 1}})
            def slow(path):
                while not os.path.exists(path):  # until the head is back
                    time.sleep(0.05)
                return "finished"

            counter = Counter.options(name="counter", lifetime="detached").remote()
            print("COUNT", aray.get([counter.incr.remote() for _ in range(5)])[-1], flush=True)
            ref = slow.remote({str(tmp_path / "go")!r})
            print("READY", aray.get_runtime_context().get_job_id(), flush=True)
            print("TASK", aray.get(ref, timeout=120), flush=True)
            print("COUNT", aray.get(counter.incr.remote()), flush=True)
            print("LOOKUP", aray.get(aray.get_actor("counter").incr.remote()), flush=True)
        """))
        # a submitted job whose entrypoint runs on the second node, and ends while the
        # head is away
        gone = tmp_path / "head-gone"
        entrypoint = tmp_path / "job.py"
        entrypoint.write_text(f"import os, time\nwhile not os.path.exists({str(gone)!r}):\n"
                              "    time.sleep(0.05)\nprint('job done')\n")
        c.cli("job", "submit", "--address", head["session_dir"], "--no-wait",
              "--submission-id", "ft-job", "--entrypoint-resources", '{"b": 0.1}', "--",
              sys.executable, str(entrypoint))
        wait_until(lambda: "RUNNING" in c.cli("job", "status", "--address",
                                              head["session_dir"], "ft-job").stdout, 60,
                   message="the submitted job to run")
        driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=c.env, cwd=tmp_path)
        lines: list[str] = []
        wait_until(lambda: _read_until(driver, lines, "READY"), 60, message="the driver's start")
        job_id = next(line.split()[1] for line in lines if line.startswith("READY"))

        # the job's entrypoint ends while the head hangs, then dies: the news of its end
        # goes into a link that is not yet known to be gone, and is lost with it
        os.kill(head["pid"], signal.SIGSTOP)
        gone.write_text("")
        job_log = Path(second["session_dir"], "logs", "job-driver-ft-job.log")
        wait_until(lambda: job_log.exists() and "job done" in job_log.read_text(), 30,
                   message="the entrypoint to end")
        os.kill(head["pid"], signal.SIGKILL)
        wait_until(lambda: not _alive(head["pid"]), 10, message="the head to be gone")
        assert _alive(second["pid"])  # it waits for the head
        again = c.start_head("--num-cpus", "1", "--storage", redis_server.url)
        assert again["pid"] != head["pid"]
        (tmp_path / "go").write_text("")

        out, err = driver.communicate(timeout=120)
        lines += out.splitlines()
        assert driver.returncode == 0, "\n".join(lines) + err
        assert "TASK finished" in lines and "COUNT 6" in lines and "LOOKUP 7" in lines, lines

        # a new driver finds the detached actor by name, with its state, and the jobs
        r = c.driver("""
            import json
            aray.init(address="auto", namespace="ft")
            print("NEXT", aray.get(aray.get_actor("counter").incr.remote()))
            from aray.util.state import list_actors, list_jobs
            print("ACTORS " + json.dumps([(a["name"], a["state"]) for a in list_actors()]))
            print("JOBS " + json.dumps({j["job_id"]: j["alive"] for j in list_jobs()}))
        """, tmp_path)
        assert "NEXT 8" in r.stdout
        status = c.cli("job", "status", "--address", again["session_dir"], "ft-job").stdout
        assert "SUCCEEDED" in status, status
        logs = c.cli("job", "logs", "--address", again["session_dir"], "ft-job").stdout
        assert "job done" in logs, logs
        actors = json.loads(r.stdout.split("ACTORS ", 1)[1].splitlines()[0])
        assert ["counter", "ALIVE"] in actors
        jobs = json.loads(r.stdout.split("JOBS ", 1)[1].splitlines()[0])
        # the first driver came back as its job's driver: its end ended the job
        assert jobs[job_id] is False, jobs
    finally:
        c.stop()


def _read_until(proc: subprocess.Popen, lines: list[str], marker: str) -> bool:
    assert proc.stdout is not None
    if proc.poll() is not None:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"the driver ended: {lines} {err}")
    line = proc.stdout.readline()
    if line:
        lines.append(line.strip())
    return any(x.startswith(marker) for x in lines)


@needs_redis
def test_a_head_whose_storage_is_gone_says_so(redis_server):
    c = Cluster()
    try:
        redis_server.stop()
        proc = c.cli("start", "--head", "--port", str(c.port), "--storage", redis_server.url,
                     check=False)
        assert proc.returncode != 0
        said = f"cannot read the head's storage at {redis_server.url}: Error 111"
        assert said in proc.stderr, proc.stderr
        assert "Start Redis there" in proc.stderr
    finally:
        c.stop()


def test_storage_must_be_a_redis_url():
    c = Cluster()
    try:
        proc = c.cli("start", "--head", "--port", str(c.port), "--storage", "postgres://db",
                     check=False)
        assert proc.returncode != 0 and "--storage must be a Redis URL" in proc.stderr
    finally:
        c.stop()


@needs_redis
def test_what_no_node_confirms_in_time_is_lost_with_its_node(redis_server, tmp_path):
    """An actor on the head's own node dies with the head's process: once the nodes had
    their time to come back, the restarted head restarts it (max_restarts) on a node that
    can hold it."""
    c = Cluster()
    c.env.update(ARAY_TOKEN="restart-test-token", ARAY_HEAD_RECONNECT_TIMEOUT="3")
    try:
        head = c.start_head("--num-cpus", "1", "--resources", '{"h": 1}', "--storage",
                            redis_server.url)
        c.driver("""
            aray.init(address="auto", namespace="ft")

            @aray.remote(resources={"h": 1}, max_restarts=1)
            class Here:
                def node(self):
                    return aray.get_runtime_context().get_node_id()

            here = Here.options(name="here", lifetime="detached").remote()
            print("NODE", aray.get(here.node.remote()))
        """, tmp_path)
        os.kill(head["pid"], signal.SIGKILL)
        wait_until(lambda: not _alive(head["pid"]), 10, message="the head to be gone")
        again = c.start_head("--num-cpus", "1", "--resources", '{"h": 1}', "--storage",
                             redis_server.url)
        r = c.driver("""
            aray.init(address="auto", namespace="ft")
            here = aray.get_actor("here")

            def node_of(actor):
                try:
                    return aray.get(actor.node.remote(), timeout=5)
                except (aray.exceptions.ActorUnavailableError,
                        aray.exceptions.GetTimeoutError, aray.exceptions.ActorDiedError):
                    return None

            print("NODE", wait_until(lambda: node_of(here), 60, message="the actor back"))
            from aray.util.state import list_actors
            print("RESTARTS", [a["restarts"] for a in list_actors() if a["name"] == "here"])
        """, tmp_path)
        assert f"NODE {again['node_id']}" in r.stdout and "RESTARTS [1]" in r.stdout, r.stdout
    finally:
        c.stop()


@needs_redis
def test_a_head_that_loses_its_storage_says_so_and_goes_on(redis_server, tmp_path):
    c = Cluster()
    try:
        head = c.start_head("--num-cpus", "1", "--storage", redis_server.url)
        redis_server.stop()
        r = c.driver("""
            aray.init(address="auto")

            @aray.remote(num_cpus=0)
            class A:
                def ping(self):
                    return "pong"

            print("PING", aray.get(A.remote().ping.remote()))
        """, tmp_path)
        assert "PING pong" in r.stdout  # the cluster works on
        log = os.path.join(head["session_dir"], "logs", "node.log")
        said = f"cannot write the head's state to {redis_server.url}"
        wait_until(lambda: said in Path(log).read_text(), 30, message="the head to say so")
    finally:
        c.stop()


@needs_redis
def test_a_redis_with_a_password_and_the_wrong_one(tmp_path):
    server = Redis(password="s3cret-pass")
    c = Cluster()
    try:
        wrong = server.url.replace("s3cret-pass", "wrong")
        proc = c.cli("start", "--head", "--port", str(c.port), "--storage", wrong, check=False)
        assert proc.returncode != 0 and "cannot read the head's storage at redis://127.0.0.1" \
            in proc.stderr, proc.stderr
        assert "wrong" not in proc.stderr  # (no password in what is printed)
        c.start_head("--num-cpus", "1", "--storage", server.url)
        r = c.driver("""
            aray.init(address="auto")
            print("NODES", len(aray.nodes()))
        """, tmp_path)
        assert "NODES 1" in r.stdout
    finally:
        c.stop()
        server.stop()


@needs_redis
def test_nodes_stop_once_the_head_does_not_come_back_in_time(redis_server):
    c = Cluster()
    c.env.update(ARAY_TOKEN="restart-test-token", ARAY_HEAD_RECONNECT_TIMEOUT="2")
    try:
        head = c.start_head("--num-cpus", "1", "--storage", redis_server.url)
        second = c.join("--num-cpus", "1")
        os.kill(head["pid"], signal.SIGKILL)
        # it waits 2 s, then stops cleanly: its store and files go with it
        wait_until(lambda: not _alive(second["pid"]), 30, message="the node to stop")
        assert not os.path.exists(second["store_dir"])
    finally:
        c.stop()
