"""Clusters of several nodes, started with the CLI as real processes on loopback: joining,
scheduling across nodes, objects that move between nodes, jobs that end everywhere, and
nodes that die."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest
from conftest import SCRIPT_HELPERS, descendants, wait_gone, wait_until, watch_root
from test_cli import free_port

#: what every driver script starts with: imports, and the polling helpers of conftest
DRIVER_PRELUDE = "import os, sys, time, aray\n" + SCRIPT_HELPERS + "\n"


class Cluster:
    """Nodes started with `aray start` in a session root of their own."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="aray-c-")
        self.env = {**os.environ, "ARAY_SESSION_ROOT": self.root}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def cli(self, *args, check=True):
        proc = subprocess.run([sys.executable, "-m", "aray", *args], capture_output=True,
                              text=True, timeout=60, env=self.env)
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def start_head(self, *args) -> dict:
        self.cli("start", "--head", "--port", str(self.port), *args)
        return self.node_infos()[-1]

    def join(self, *args) -> dict:
        out = self.cli("start", "--address", self.address, *args).stdout
        assert f"in the cluster at {self.address}" in out
        pid = int(out.split("(pid ")[1].split(")")[0])
        return next(i for i in self.node_infos() if i["pid"] == pid)

    def node_infos(self) -> list[dict]:
        infos = []
        for path in sorted(glob.glob(os.path.join(self.root, "session_*", "cluster.json"))):
            if os.path.islink(os.path.dirname(path)):  # session_latest
                continue
            with open(path) as f:
                infos.append(json.load(f))
        return infos

    def pids(self) -> list[int]:
        pids = []
        for info in self.node_infos():
            pids += [info["pid"], *descendants(info["pid"])]
        return pids

    def driver(self, code: str, tmp_path, check=True, timeout=90):
        script = tmp_path / "driver.py"
        script.write_text(DRIVER_PRELUDE + textwrap.dedent(code))
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=timeout, cwd=tmp_path, env=self.env)
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def stop(self) -> None:
        watch_root(self.root)  # the leak check then knows the sessions of this root
        pids = self.pids()
        self.cli("stop", check=False)
        assert wait_gone(pids) == [], "processes left behind by aray stop"
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes():
    """A head with 1 CPU and a second node with 1 CPU and the resource "special"."""
    c = Cluster()
    c.head = c.start_head("--num-cpus", "1")
    c.second = c.join("--num-cpus", "1", "--resources", '{"special": 2}')
    yield c
    c.stop()


def test_nodes_join_and_are_listed(two_nodes, tmp_path):
    out = two_nodes.cli("status", "--address", two_nodes.address).stdout
    assert "2 nodes alive, 0 dead" in out and "special              0 / 2" in out
    r = two_nodes.driver(f"""
        aray.init(address="{two_nodes.address}")
        nodes = aray.nodes()
        print("NODES", sorted(n["NodeID"] for n in nodes if n["Alive"]))
        print("TOTAL", aray.cluster_resources()["CPU"], aray.cluster_resources()["special"])
    """, tmp_path)
    ids = sorted([two_nodes.head["node_id"], two_nodes.second["node_id"]])
    assert f"NODES {ids}" in r.stdout and "TOTAL 2.0 2.0" in r.stdout


def test_tasks_and_actors_run_where_the_resources_are(two_nodes, tmp_path):
    r = two_nodes.driver("""
        aray.init(address="auto")
        here = aray.get_runtime_context().get_node_id()

        @aray.remote
        def where(delay=0.0):
            time.sleep(delay)
            return aray.get_runtime_context().get_node_id()

        # one CPU per node: four slow tasks use both nodes
        spread = set(aray.get([where.remote(1.0) for _ in range(4)]))
        print("SPREAD", len(spread))
        special = set(aray.get([where.options(resources={"special": 1}).remote()
                                for _ in range(3)]))
        print("SPECIAL", special != {here} and len(special) == 1)

        @aray.remote(resources={"special": 1})
        class Counter:
            def __init__(self):
                self.n = 0
            def add(self):
                self.n += 1
                return self.n, aray.get_runtime_context().get_node_id()
        c = Counter.remote()
        print("ACTOR", [aray.get(c.add.remote())[0] for _ in range(3)],
              aray.get(c.add.remote())[1] in special)
    """, tmp_path)
    assert "SPREAD 2" in r.stdout and "SPECIAL True" in r.stdout
    assert "ACTOR [1, 2, 3] True" in r.stdout


def test_streaming_generators_across_nodes(two_nodes, tmp_path):
    r = two_nodes.driver("""
        import numpy as np
        aray.init(address="auto")

        @aray.remote(resources={"special": 1})
        def far(n):
            for i in range(n):
                yield np.full(200_000, i, dtype=np.uint8)  # large: stored on that node
            raise ValueError(f"stopped after {n}")

        got = []
        try:
            for ref in far.remote(3):
                got.append(int(aray.get(ref)[0]))
        except ValueError as exc:
            got.append(str(exc.cause))
        print("FAR", got)

        @aray.remote(resources={"special": 1})
        def make():
            return np.arange(300_000, dtype=np.int64)  # lives on the other node

        @aray.remote(num_cpus=0)
        def near(arr, k):  # here: fed by the other node's object
            for i in range(k):
                yield int(arr[i * 1000])

        print("NEAR", [aray.get(ref) for ref in near.remote(make.remote(), 3)])
    """, tmp_path)
    assert "FAR [0, 1, 2, 'stopped after 3']" in r.stdout, r.stdout + r.stderr
    assert "NEAR [0, 1000, 2000]" in r.stdout, r.stdout + r.stderr


def test_output_of_tasks_on_other_nodes_reaches_the_driver(two_nodes, tmp_path):
    r = two_nodes.driver("""
        aray.init(address="auto")
        @aray.remote(resources={"special": 1})
        def shout(i):
            print("hello from the second node", i)
        out, _ = echo_output()
        aray.get([shout.remote(i) for i in range(3)])
        # lines are read every 0.1 s and travel through the head
        wait_until(lambda: out.text().count("hello from the second node") == 3, 10,
                   message="the three lines at the driver")
    """, tmp_path)
    for i in range(3):
        assert f"hello from the second node {i}" in r.stdout, r.stdout + r.stderr
    assert "(shout pid=" in r.stdout


def test_objects_move_between_nodes_once_per_node(two_nodes, tmp_path):
    r = two_nodes.driver("""
        import asyncio
        import numpy as np
        aray.init(address="auto")

        @aray.remote(resources={"special": 1})
        def make(n):
            return np.arange(n, dtype=np.int64)

        @aray.remote(resources={"special": 1})
        def total(a):
            return int(a.sum())

        # made on the second node, read here: 80 MB in chunks
        a = aray.get(make.remote(10_000_000))
        print("GET", int(a.sum()) == 10_000_000 * 9_999_999 // 2, a.flags.writeable)
        # put here, read there by three tasks: one copy on that node
        ref = aray.put(np.ones(3_000_000))
        print("SUMS", aray.get([total.remote(ref) for _ in range(3)]))

        async def main():
            x = await make.remote(1_000_000)
            return int(x[-1])
        print("AWAIT", asyncio.run(main()))

        # wait(fetch_local=False) does not pull; get does
        def stored():
            return aray.object_store_stats()["num_objects"]
        # copies of the objects above that were freed go: only `ref` stays here
        wait_until(lambda: stored() == 1, 10, message="only one object stored here")
        before = stored()
        far = make.remote(2_000_000)
        ready, _ = aray.wait([far], fetch_local=False)
        after_wait = stored()
        value = aray.get(far)
        print("COPIES", after_wait - before, stored() - before)
    """, tmp_path)
    assert "GET True False" in r.stdout and "SUMS [3000000, 3000000, 3000000]" in r.stdout
    assert "AWAIT 999999" in r.stdout and "COPIES 0 1" in r.stdout


def test_a_driver_outside_the_cluster_in_client_mode(two_nodes, tmp_path):
    token_file = os.path.join(two_nodes.head["session_dir"], "token")
    code = f"""
        import numpy as np
        try:
            aray.init(address="aray://{two_nodes.address}")
        except ValueError as e:
            print("NO-TOKEN", "token" in str(e))
        aray.init(address="aray://{two_nodes.address}", token=open({token_file!r}).read())
        out, _ = echo_output()
        @aray.remote(resources={{"special": 1}})
        def make(n):
            print("making", n)
            return np.arange(n)
        @aray.remote
        def total(a):
            return int(a.sum())
        a = aray.get(make.remote(3_000_000))  # downloaded from the second node
        # one string per line: worker output is printed from another thread meanwhile
        print(f"GOT {{int(a.sum()) == 3_000_000 * 2_999_999 // 2}}")
        big = aray.put(np.ones(2_000_000))  # kept here, sent with the task
        print(f"SUM {{aray.get(total.remote(big))}}")
        wait_until(lambda: "making 3000000" in out.text(), 10, message="the worker's line")
    """
    env = {k: v for k, v in two_nodes.env.items() if k != "ARAY_TOKEN"}
    # no session root of its own: a client needs nothing of this machine's clusters
    env["ARAY_SESSION_ROOT"] = str(tmp_path / "none")
    # its scratch directory goes here; the script ends without aray.shutdown(), so the
    # shutdown at exit must remove it
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    script = tmp_path / "client.py"
    script.write_text(DRIVER_PRELUDE + textwrap.dedent(code))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(scratch.iterdir()) == [], r.stderr
    assert "NO-TOKEN True" in r.stdout and "GOT True" in r.stdout
    assert "SUM 2000000" in r.stdout and "making 3000000" in r.stdout


def test_a_finished_job_leaves_nothing_on_any_node(two_nodes, tmp_path):
    import asyncio

    from aray import _protocol as P
    from aray._link import ask

    two_nodes.driver("""
        import numpy as np
        aray.init(address="auto")
        @aray.remote(resources={"special": 1})
        def make():
            return np.zeros(1_000_000)
        refs = [make.remote() for _ in range(3)]
        aray.wait(refs, num_returns=3)
        print(aray.get(refs[0]).shape)
    """, tmp_path)
    session = os.path.dirname(glob.glob(os.path.join(two_nodes.root, "session_*",
                                                     "cluster.json"))[0])
    with open(os.path.join(session, "token")) as f:
        token = f.read()

    async def stored(info):
        reply = await ask(info["node_address"], token, lambda r: P.GetStoreStats(r))
        return reply.stats["num_objects"]

    def counts():
        return [asyncio.run(stored(i)) for i in (two_nodes.head, two_nodes.second)]

    wait_until(lambda: counts() == [0, 0], 5, 0.1, message="no object left on the nodes")
    assert counts() == [0, 0], f"objects left on the nodes: {counts()}"


def test_a_pending_task_runs_when_a_node_that_can_run_it_joins(tmp_path):
    c = Cluster()
    try:
        c.start_head("--num-cpus", "1")
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent("""
                import aray
                aray.init(address="auto")
                @aray.remote(resources={"late": 1})
                def f():
                    return aray.get_runtime_context().get_node_id()
                @aray.remote(resources={"late": 0.5})
                class Late:
                    def node(self):
                        return aray.get_runtime_context().get_node_id()
                late = Late.remote()
                print("RESULT", aray.get(f.remote(), timeout=60), flush=True)
                print("ACTOR", aray.get(late.node.remote(), timeout=60), flush=True)
            """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=c.env)

        def both_pending():  # no node has "late"
            status = c.cli("status").stdout
            return ("{CPU: 1, late: 1}: 1 pending  (infeasible" in status
                    and "{CPU: 1, late: 0.5}: 1 pending  (infeasible" in status)

        wait_until(both_pending, 30, 0.2, message="the task and the actor to be pending")
        assert proc.poll() is None
        status = c.cli("status").stdout
        assert "{CPU: 1, late: 1}: 1 pending  (infeasible: no node can run it)" in status, status
        assert "{CPU: 1, late: 0.5}: 1 pending  (infeasible" in status, status
        assert "Object store: 0.0 MiB used of" in status
        late = c.join("--num-cpus", "1", "--resources", '{"late": 2}')
        out, err = proc.communicate(timeout=60)
        assert f"RESULT {late['node_id']}" in out, out + err
        assert f"ACTOR {late['node_id']}" in out, out + err
        assert "cannot be scheduled right now" in err  # the warning while it waited
    finally:
        c.stop()


def test_a_dead_node_is_noticed_and_its_work_moves(tmp_path):
    c = Cluster()
    try:
        c.start_head("--num-cpus", "1")
        second = c.join("--num-cpus", "1", "--resources", '{"special": 1}')
        doomed = [second["pid"], *descendants(second["pid"])]
        r = c.driver(f"""
            import numpy as np
            aray.init(address="auto")
            here = aray.get_runtime_context().get_node_id()
            there = "{second['node_id']}"

            def node():
                return aray.get_runtime_context().get_node_id()

            @aray.remote(max_retries=2)
            def slow(i, delay):
                time.sleep(delay)
                return i, node()

            # a shape of its own: tasks of one shape share a queue, and `busy` could then
            # start on whichever node's worker came first
            @aray.remote(num_cpus=0.5)
            def make():
                return np.full(1_000_000, 7.0), node()

            @aray.remote(resources={{"special": 0.5}})
            class Keeper:
                def node(self):
                    return node()
                def array(self):
                    return np.ones(1_000_000)

            # the head's CPU is busy, so `make` runs on the second node
            busy = slow.remote(-1, 2)
            remade = make.options(num_returns=2).remote()
            print("MADE-THERE", aray.get(remade[1]) == there, flush=True)
            keeper = Keeper.remote()
            print("ACTOR-THERE", aray.get(keeper.node.remote()) == there, flush=True)
            lost = keeper.array.remote()  # an actor's result: no task to run again
            aray.wait([lost, busy], num_returns=2)
            refs = [slow.remote(i, 3) for i in range(2)]  # one per node
            from aray.util.state import list_tasks
            wait_until(lambda: sum(t["name"] == "slow" and t["state"] == "RUNNING"
                                   for t in list_tasks()) == 2, 10,
                       message="a slow task running on each node")
            os.kill({second['pid']}, 9)  # the second node's agent dies mid-task
            results = aray.get(refs, timeout=60)
            print("RESULTS", [i for i, _ in results], all(n == here for _, n in results))
            alive = {{n["NodeID"]: n["Alive"] for n in aray.nodes()}}
            print("SECOND-ALIVE", alive[there])
            # rebuilt by running `make` again, here
            print("REBUILT", float(aray.get(remade[0], timeout=60).sum()) == 7e6)
            try:
                aray.get(lost, timeout=30)
            except aray.exceptions.ObjectLostError as e:
                print("LOST", there[:12] in str(e))
            try:
                aray.get(keeper.node.remote(), timeout=30)
            except aray.exceptions.ActorDiedError as e:
                print("ACTOR-DIED", there[:12] in str(e))
        """, tmp_path)
        out = r.stdout + r.stderr
        assert "MADE-THERE True" in r.stdout and "ACTOR-THERE True" in r.stdout, out
        assert "RESULTS [0, 1] True" in r.stdout, out
        assert "SECOND-ALIVE False" in r.stdout and "REBUILT True" in r.stdout, out
        assert "LOST True" in r.stdout and "ACTOR-DIED True" in r.stdout, out
        # the dead node's workers and worker template exit by themselves
        assert wait_gone(doomed) == [], "processes of the dead node outlived it"
    finally:
        c.stop()


def test_joining_with_a_wrong_token_or_address_is_refused(tmp_path):
    c = Cluster()
    try:
        c.start_head("--num-cpus", "1")
        bad = c.cli("start", "--address", c.address, "--token", "wrong", check=False)
        assert bad.returncode == 1 and "wrong cluster token" in bad.stderr, bad.stderr
        nowhere = c.cli("start", "--address", f"127.0.0.1:{free_port()}", "--token", "x",
                        check=False)
        assert nowhere.returncode == 1 and "cannot reach aray" in nowhere.stderr
        both = c.cli("start", "--head", "--address", c.address, check=False)
        assert both.returncode == 1 and "say what to start" in both.stderr
        assert len(c.node_infos()) == 1
    finally:
        c.stop()


def test_a_node_that_stops_answering_is_marked_dead(tmp_path):
    c = Cluster()
    c.env["ARAY_NODE_TIMEOUT"] = "2"  # seconds without a heartbeat (default 10)
    try:
        c.start_head("--num-cpus", "1")
        second = c.join("--num-cpus", "1")
        tree = [second["pid"], *descendants(second["pid"])]
        os.kill(second["pid"], signal.SIGSTOP)  # hung: its sockets stay open
        try:
            wait_until(lambda: "1 node alive, 1 dead" in c.cli("status", "--address",
                                                              c.address).stdout,
                       15, 0.2, message="the hung node to be marked dead")
            out = c.cli("status", "--address", c.address).stdout
            assert "1 node alive, 1 dead" in out, out
        finally:
            os.kill(second["pid"], signal.SIGCONT)
        # once it runs again it finds itself cut off, and stops with its workers
        assert wait_gone(tree, timeout=15) == []
    finally:
        c.stop()


def test_tls_links_between_nodes(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    node_cert = ca.issue_cert("127.0.0.1")
    paths = {}
    for name, blob in (("ca", ca.cert_pem), ("key", node_cert.private_key_pem),
                       ("cert", node_cert.cert_chain_pems[0])):
        paths[name] = str(tmp_path / f"{name}.pem")
        blob.write_to_path(paths[name])
    c = Cluster()
    tls_flags = ["--tls-cert", paths["cert"], "--tls-key", paths["key"], "--tls-ca", paths["ca"]]
    try:
        c.start_head("--num-cpus", "1", *tls_flags)
        # a node without TLS cannot join a TLS cluster
        plain = c.cli("start", "--address", c.address, check=False)
        assert plain.returncode == 1 and "cannot reach aray" in plain.stderr, plain.stderr
        c.join("--num-cpus", "1", "--resources", '{"special": 1}', *tls_flags)
        c.env.update(ARAY_TLS_CERT=paths["cert"], ARAY_TLS_KEY=paths["key"],
                     ARAY_TLS_CA=paths["ca"])
        r = c.driver("""
            import numpy as np
            aray.init(address="auto")
            @aray.remote(resources={"special": 1})
            def make():
                return np.arange(1_000_000)
            print("SUM", int(aray.get(make.remote()).sum()))
        """, tmp_path)
        assert f"SUM {sum(range(1_000_000))}" in r.stdout
        assert "2 nodes alive" in c.cli("status", "--address", c.address).stdout
    finally:
        c.stop()


def _netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        return False
    name = f"aray-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


@pytest.fixture
def other_machine():
    """A network namespace with its own address (10.213.N.2; this side is 10.213.N.1),
    in which a command runs with a private session root and /dev/shm: a second machine, as
    far as aray can tell."""
    if not _netns_available():
        pytest.skip("needs root and network namespaces")
    n = os.getpid() % 200 + 20
    ns, host_if, ns_if = f"aray-t{n}", f"arayh{n}", f"arayn{n}"
    here, there = f"10.213.{n}.1", f"10.213.{n}.2"
    setup = [["ip", "netns", "add", ns],
             ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
             ["ip", "link", "set", ns_if, "netns", ns],
             ["ip", "addr", "add", f"{here}/24", "dev", host_if],
             ["ip", "link", "set", host_if, "up"],
             ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{there}/24", "dev", ns_if],
             ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
             ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]
    try:
        for cmd in setup:
            subprocess.run(cmd, check=True, capture_output=True)

        private = tempfile.mkdtemp(prefix="aray-there-")  # its own session root...

        def run(args: list[str], **kwargs) -> subprocess.Popen:
            # ... and /dev/shm, each a tmpfs only that mount namespace sees
            # (mode 0700: aray refuses a session root that others can write to)
            inner = (f"mount -t tmpfs -o mode=0700 tmpfs {private} && "
                     "mount -t tmpfs tmpfs /dev/shm && "
                     f'ARAY_SESSION_ROOT={private} exec "$@"')
            return subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--mount",
                                     "--propagation", "private", "sh", "-c", inner, "sh",
                                     *args], **kwargs)

        yield here, there, run
        shutil.rmtree(private, ignore_errors=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def test_a_node_on_another_machine(other_machine, tmp_path):
    here, there, run_there = other_machine
    c = Cluster()
    c.address = f"{here}:{c.port}"
    node = None
    try:
        c.head = c.start_head("--num-cpus", "1", "--node-ip-address", here)
        with open(os.path.join(c.head["session_dir"], "token")) as f:
            token = f.read()
        node = run_there([sys.executable, "-m", "aray", "start", "--address", c.address,
                          "--token", token, "--node-ip-address", there, "--num-cpus", "1",
                          "--resources", '{"there": 1}', "--block"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: "2 nodes alive" in c.cli("status", "--address", c.address).stdout,
                   30, 0.3, message="the other machine's node to join")
        r = c.driver(f"""
            import numpy as np
            aray.init(address="{c.address}")
            out, _ = echo_output()
            print(f"IPS {{sorted(n['NodeManagerAddress'] for n in aray.nodes())}}")
            @aray.remote(resources={{"there": 1}})
            def far(a):
                print("far away")
                return a * 2
            x = aray.put(np.arange(1_000_000))  # lives here; the other node pulls it
            y = aray.get(far.remote(x))  # made there; pulled here
            print(f"OK {{int(y.sum()) == 2 * int(np.arange(1_000_000).sum())}}")
            wait_until(lambda: "far away" in out.text(), 10, message="the worker's line")
        """, tmp_path)
        assert f"IPS {sorted([here, there])}" in r.stdout, r.stdout + r.stderr
        assert "OK True" in r.stdout and "far away" in r.stdout
    finally:
        if node is not None:
            node.terminate()  # --block: stops that node and its workers
            node.wait(timeout=30)
        c.stop()


def test_state_api_and_aray_list(two_nodes, tmp_path):
    r = two_nodes.driver("""
        from aray.util.state import list_actors, list_jobs, list_nodes
        aray.init(address="auto")
        @aray.remote(resources={"special": 1})
        class Far:
            def pid(self):
                return os.getpid()
        far = Far.options(name="far").remote()
        pid = aray.get(far.pid.remote())
        (row,) = list_actors(filters=[("name", "=", "far")])
        print("ACTOR", row["state"], row["pid"] == pid, row["class_name"], row["node_id"])
        print("NODES", len(list_nodes(filters=[("Alive", "=", True)])))
        print("JOB", [j["alive"] for j in list_jobs(filters=[("driver_pid", "=", os.getpid())])])
        sys.stdout.flush()
        import subprocess
        out = subprocess.run([sys.executable, "-m", "aray", "list", "actors", "--filter",
                              "name=far"], capture_output=True, text=True).stdout
        print("CLI", "ALIVE" in out and "Far" in out and "(1 actor)" in out)
        out = subprocess.run([sys.executable, "-m", "aray", "list", "nodes"],
                             capture_output=True, text=True).stdout
        print("CLI-NODES", "(2 nodes)" in out and "special: 2" in out)
    """, tmp_path)
    assert f"ACTOR ALIVE True Far {two_nodes.second['node_id']}" in r.stdout, r.stdout + r.stderr
    assert "NODES 2" in r.stdout and "JOB [True]" in r.stdout
    assert "CLI True" in r.stdout and "CLI-NODES True" in r.stdout
    out = two_nodes.cli("list", "jobs").stdout
    assert "False" in out  # the driver above has ended
    bad = two_nodes.cli("list", "actors", "--filter", "oops", check=False)
    assert bad.returncode == 1 and "KEY=VALUE" in bad.stderr


def test_task_table_summary_and_timeline(two_nodes, tmp_path):
    r = two_nodes.driver("""
        from aray.util.state import list_tasks, summarize_tasks
        aray.init(address="auto")
        @aray.remote(resources={"special": 1})
        def slow():
            time.sleep(1.0)
        @aray.remote
        def fails():
            raise KeyError("missing")
        @aray.remote
        class Counter:
            def add(self):
                return 1
        job = aray.get_runtime_context().get_job_id()
        running = [slow.remote(), slow.remote()]  # on the second node, which has "special"
        # the second node may first start a worker for this job
        seen = wait_until(lambda: any(t["name"] == "slow" and t["state"] == "RUNNING"
                                      and t["job_id"] == job for t in list_tasks()),
                          10, 0.1, message="a slow task running")
        print("RUNNING", seen)
        failed = fails.remote()
        c = Counter.remote()
        aray.get(c.add.remote())
        aray.wait([failed])

        def ended(*names):  # tasks report their states every 0.1 s
            return all(t["state"] in ("FINISHED", "FAILED") for t in list_tasks()
                       if t["job_id"] == job and t["name"] in names) and all(
                any(t["name"] == n and t["job_id"] == job for t in list_tasks())
                for n in names)

        wait_until(lambda: ended("fails", "Counter.add"), 10,
                   message="the failed task and the actor call to show as ended")
        mine = [t for t in list_tasks() if t["job_id"] == job]
        states = {t["name"]: t["state"] for t in mine}
        print("FAILED", states.get("fails"), [t["error"] for t in mine if t["name"] == "fails"])
        print("ACTOR", states.get("Counter.add"))
        aray.get(running)
        wait_until(lambda: ended("slow"), 10, message="the slow tasks to show as ended")
        print("SUMMARY", summarize_tasks()["slow"])
        (one,) = [t for t in list_tasks(filters=[("name", "=", "slow")])][:1]
        print("WHERE", one["node_id"], one["worker_pid"] > 0, one["duration_s"] >= 1.0)
    """, tmp_path)
    out = r.stdout + r.stderr
    assert "RUNNING True" in r.stdout, out
    assert "FAILED FAILED [\"KeyError: 'missing'\"]" in r.stdout, out
    assert "ACTOR FINISHED" in r.stdout and "SUMMARY {'FINISHED': 2}" in r.stdout, out
    assert f"WHERE {two_nodes.second['node_id']} True True" in r.stdout, out
    listed = two_nodes.cli("list", "tasks", "--filter", "name=fails").stdout
    assert "FAILED" in listed and "KeyError" in listed and "(1 task)" in listed
    summary = two_nodes.cli("summary", "tasks").stdout
    assert "slow" in summary and "FINISHED" in summary
    trace = tmp_path / "trace.json"
    two_nodes.cli("timeline", str(trace))
    events = json.loads(trace.read_text())
    slow = [e for e in events if e["name"] == "slow"]
    assert len(slow) >= 2 and all(e["ph"] == "X" and e["dur"] >= 1e6 for e in slow)
