"""Ray programs that must behave on aray as they do on Ray (the second list): init that
finds a running cluster, implicit init, exit() in a task or actor, cancel of a borrowed ref,
decorator forms, GPU workers, functions too large to ship, actor generators, ActorPool.push,
the driver's import path, legacy names."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from conftest import PRELUDE, wait_gone, watch_root
from test_cli import cli, free_port

import aray


def run(code: str, root=None, cwd=None, env=None, timeout=60) -> subprocess.CompletedProcess:
    """A script with the tests' prelude in a fresh interpreter (under ``root`` if given)."""
    full_env = {**os.environ, **(env or {})}
    if root is not None:
        full_env["ARAY_SESSION_ROOT"] = str(root)
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=full_env)


@pytest.fixture
def own_head():
    """A head that `aray start` runs under a session root of its own, on a free port."""
    root = tempfile.mkdtemp(prefix="aray-h-")
    watch_root(root)
    port = free_port()
    out = cli("start", "--head", "--port", str(port), "--num-cpus", "2",
              "--node-ip-address", "127.0.0.1", root=root).stdout
    pid = int(out.split("(pid ")[1].split(")")[0])
    try:
        yield root, port
    finally:
        cli("stop", root=root)
        assert wait_gone([pid]) == []
        shutil.rmtree(root, ignore_errors=True)


def test_init_joins_the_cluster_aray_start_runs_and_says_so(own_head):
    root, port = own_head
    joined = run("""
        info = aray.init()
        @aray.remote
        def where():
            return aray.get_runtime_context().get_node_id()
        out = {"info": dict(info), "address": info.address, "node": aray.get(where.remote()),
               "nodes": [n["NodeID"] for n in aray.nodes()]}
        aray.shutdown()
        sys.stdout.write("OUT " + json.dumps(out) + "\\n")
    """, root=root)
    assert joined.returncode == 0, joined.stderr
    out = json.loads(joined.stdout.split("OUT ", 1)[1])
    assert out["address"] == out["info"]["address"] == f"127.0.0.1:{port}"
    assert out["nodes"] == [out["node"]]  # the head's node ran it
    assert f"aray: connecting to the cluster at 127.0.0.1:{port}" in joined.stderr
    assert joined.stderr.count("\n") == 1, joined.stderr  # one line

    # the driver's shutdown left the cluster running; options of a new cluster are refused
    assert "1 node alive" in cli("status", root=root).stdout
    refused = run("""
        try:
            aray.init(num_cpus=3)
        except ValueError as e:
            sys.stdout.write("REFUSED " + str(e) + "\\n")
    """, root=root)
    assert "REFUSED" in refused.stdout and "address='local'" in refused.stdout, refused

    # address="local" starts a cluster of its own, found by its session directory
    local = run("""
        info = aray.init(address="local", num_cpus=1)
        same = aray.init(address=info["address"], ignore_reinit_error=True)
        sys.stdout.write("OUT " + json.dumps([info["address"], info["session_dir"],
                                              len(aray.nodes())]) + "\\n")
        aray.shutdown()
    """, root=root)
    address, session_dir, n = json.loads(local.stdout.split("OUT ", 1)[1])
    assert address == session_dir and n == 1 and "connecting" not in local.stderr


def test_the_first_call_without_init_calls_it(own_head, tmp_path):
    root, port = own_head
    implicit = run("""
        @aray.remote
        def square(x):
            return x * x
        ref = square.remote(4)
        out = [aray.get(ref), aray.is_initialized()]
        sys.stdout.write("OUT " + json.dumps(out) + "\\n")
    """, root=root)
    assert implicit.returncode == 0, implicit.stderr
    assert json.loads(implicit.stdout.split("OUT ", 1)[1])[:2] == [16, True]
    assert "aray.init() was not called; calling it with default options" in implicit.stderr
    assert f"connecting to the cluster at 127.0.0.1:{port}" in implicit.stderr

    # with no cluster running: put starts one for the program, which ends with it
    alone = tempfile.mkdtemp(prefix="aray-i-")
    watch_root(alone)
    try:
        own = run("""
            ref = aray.put([1, 2])
            sys.stdout.write("OUT " + json.dumps(aray.get(ref)) + "\\n")
            report_pids()
        """, root=alone)
        assert own.returncode == 0, own.stderr
        assert json.loads(own.stdout.split("OUT ", 1)[1].splitlines()[0]) == [1, 2]
        pids = json.loads(own.stdout.split("PIDS ", 1)[1].splitlines()[0])
        assert wait_gone(pids) == []
        off = run("""
            try:
                aray.wait([aray.put(1)])
            except aray.exceptions.NotInitializedError as e:
                sys.stdout.write("NOTINIT\\n")
        """, root=alone, env={"RAY_ENABLE_AUTO_CONNECT": "0"})
        assert "NOTINIT" in off.stdout, off
    finally:
        shutil.rmtree(alone, ignore_errors=True)


def test_exit_in_a_task_or_an_actor_ends_its_worker(run_script, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    r = run_script(f"""
        import atexit
        aray.init(num_cpus=1)
        MARKS = {str(marks)!r}

        def mark(what):
            open(os.path.join(MARKS, f"{{what}}-{{os.getpid()}}"), "w").close()

        @aray.remote(max_retries=0)
        def quits(how):
            atexit.register(mark, "task")
            sys.exit(3) if how == "sys" else exit()

        @aray.remote(max_retries=1)
        def quits_once():
            if not os.listdir(MARKS) or not any(m.startswith("retried") for m in
                                                os.listdir(MARKS)):
                mark("retried")
                sys.exit(0)
            return "second try"

        @aray.remote(max_retries=0)
        async def quits_async():
            sys.exit(1)

        @aray.remote
        class Quitter:
            def __init__(self):
                atexit.register(mark, "actor")
            def ping(self):
                return "pong"
            def leave(self):
                exit(0)

        out = []
        for call in (quits.remote("sys"), quits.remote("builtin"), quits_async.remote()):
            try:
                aray.get(call, timeout=30)
            except aray.exceptions.WorkerCrashedError:
                out.append("crashed")
            except Exception as e:
                out.append(type(e).__name__)
        out.append(aray.get(quits_once.remote(), timeout=30))
        q = Quitter.remote()
        out.append(aray.get(q.ping.remote()))
        try:
            aray.get(q.leave.remote(), timeout=30)
        except aray.exceptions.ActorDiedError as e:
            out.append("died" if "exited" in str(e) else str(e))
        try:
            aray.get(q.ping.remote(), timeout=30)
        except aray.exceptions.ActorDiedError:
            out.append("still dead")
        sys.stdout.write("OUT " + json.dumps(out) + "\\n")
        report_pids()
    """)
    out = json.loads(r.stdout.split("OUT ", 1)[1].splitlines()[0])
    assert out == ["crashed"] * 3 + ["second try", "pong", "died", "still dead"], out
    names = sorted(m.split("-")[0] for m in os.listdir(marks))
    assert names == ["actor", "retried", "task", "task"], names  # atexit handlers ran
    r.assert_no_leftovers()


def test_cancel_of_a_ref_another_task_created_reaches_that_task(run_script):
    r = run_script("""
        aray.init(num_cpus=3)

        @aray.remote
        def slow():
            for _ in range(1200):  # (an injected cancel lands between sleeps)
                time.sleep(0.05)

        @aray.remote
        def spawn():
            return [slow.remote()]  # the ref is this task's worker's own

        @aray.remote
        def cancel_it(refs, force):
            aray.cancel(refs[0], force=force)  # a ref of the driver's, passed in
            return "sent"

        def outcome(ref):
            try:
                aray.get(ref, timeout=30)
                return "finished"
            except aray.exceptions.TaskCancelledError:
                return "cancelled"
            except Exception as e:
                return type(e).__name__

        out = []
        for force in (False, True):
            mine = slow.remote()
            assert aray.get(cancel_it.remote([mine], force)) == "sent"
            out.append(outcome(mine))
            [theirs] = aray.get(spawn.remote())
            aray.cancel(theirs, force=force)
            out.append(outcome(theirs))
        sys.stdout.write("OUT " + json.dumps(out) + "\\n")
        report_pids()
    """, timeout=120)
    assert json.loads(r.stdout.split("OUT ", 1)[1].splitlines()[0]) == ["cancelled"] * 4
    r.assert_no_leftovers()


def test_gpu_tasks_get_workers_of_their_own_devices(run_script):
    r = run_script("""
        aray.init(num_cpus=4, num_gpus=2)

        @aray.remote
        def seen():
            return [os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), aray.get_gpu_ids()]

        runs = []
        for gpus in [0, 1, 0.5, 0, 1, 0.5, 0.5, 1, 0, 2, 1, 0]:
            runs.append([gpus] + aray.get(seen.options(num_gpus=gpus).remote()))
        sys.stdout.write("OUT " + json.dumps(runs) + "\\n")
        report_pids()
    """)
    runs = json.loads(r.stdout.split("OUT ", 1)[1].splitlines()[0])
    devices_of_pid: dict = {}
    for gpus, pid, visible, ids in runs:
        if gpus:
            assert visible == ",".join(map(str, ids)) and len(ids) == (2 if gpus == 2 else 1)
        else:
            assert visible is None and ids == [], (visible, ids)
        devices_of_pid.setdefault(pid, set()).add(tuple(ids))
    # each worker ran with one set of devices (or none) all its life
    assert all(len(devices) == 1 for devices in devices_of_pid.values()), devices_of_pid
    assert len(devices_of_pid) < len(runs)  # and workers were reused when they matched
    r.assert_no_leftovers()


def test_items_of_a_dropped_generator_leave_the_store(run_script):
    r = run_script("""
        import gc
        from aray import _global
        aray.init(num_cpus=2)

        @aray.remote
        def numbers(n):
            for _ in range(n):
                yield b"x" * 200_000  # in the store, not inline

        @aray.remote
        class Source:
            def numbers(self, n):
                for _ in range(n):
                    yield b"x" * 200_000
            async def anumbers(self, n):
                for _ in range(n):
                    yield b"x" * 200_000
            def ping(self):
                return "pong"

        source = Source.remote()
        assert aray.get(source.ping.remote()) == "pong"
        core = _global.core()
        base = len(core.objects.entries)

        def take_three(gen):
            for i, ref in enumerate(gen):
                aray.get(ref)
                if i == 2:
                    return

        def settled():
            gc.collect()
            return (aray.object_store_stats()["num_objects"] == 0
                    and len(core.objects.entries) <= base)

        out = []
        for make in (lambda: numbers.remote(40), lambda: source.numbers.remote(40),
                     lambda: source.anumbers.remote(40)):
            take_three(make())
            deadline = time.time() + 30
            while not settled() and time.time() < deadline:
                time.sleep(0.05)
            out.append([settled() or [aray.object_store_stats()["num_objects"],
                                      len(core.objects.entries), base],
                        aray.get(source.ping.remote(), timeout=20)])
        sys.stdout.write("OUT " + json.dumps(out) + "\\n")
        report_pids()
    """)
    assert json.loads(r.stdout.split("OUT ", 1)[1].splitlines()[0]) == [[True, "pong"]] * 3
    r.assert_no_leftovers()


class Point:
    """Defined at module level in a test file: pickled by reference to this module, which
    the workers import from the directory pytest put on the driver's path."""

    def __init__(self, x):
        self.x = x


@aray.remote
def double_x(point):
    return Point(point.x * 2)


def test_workers_import_what_the_driver_can(cluster):
    assert aray.get(double_x.remote(Point(3))).x == 6


def test_workers_see_a_folder_the_driver_put_on_its_path(run_script, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "helper_module_xyz.py").write_text("def answer():\n    return 42\n")
    r = run_script(f"""
        sys.path.insert(0, {str(elsewhere)!r})
        import helper_module_xyz
        aray.init(num_cpus=1)

        @aray.remote
        def use():
            import helper_module_xyz as h
            return h.answer()

        sys.stdout.write("OUT " + json.dumps([aray.get(use.remote()),
                                              aray.get(aray.put(helper_module_xyz.answer))()])
                         + "\\n")
        report_pids()
    """)
    assert json.loads(r.stdout.split("OUT ", 1)[1].splitlines()[0]) == [42, 42]
    r.assert_no_leftovers()


def test_decorator_forms_and_direct_calls_are_refused_as_in_ray(cluster):
    for args in [(), (1,), ("x", "y")]:
        with pytest.raises(AssertionError, match="The @aray.remote decorator must be applied "
                           "either with no arguments and no parentheses") as info:
            aray.remote(*args)
        assert isinstance(info.value, TypeError) and "'num_cpus'" in str(info.value)

    @aray.remote
    class Counter:
        pass

    with pytest.raises(TypeError, match=r"Actors cannot be instantiated directly. Instead "
                       r"of 'Counter\(\)', use 'Counter.remote\(\)'."):
        Counter()


def test_a_function_too_large_to_ship_is_refused(cluster, monkeypatch):
    blob = b"x" * 3_000_000

    @aray.remote
    def captures():
        return len(blob)

    @aray.remote
    class Holds:
        def size(self):
            return len(blob)

    monkeypatch.setenv("ARAY_FUNCTION_SIZE_ERROR_THRESHOLD", str(2_000_000))
    with pytest.raises(ValueError, match=r"The remote function .*captures is too large "
                       r"\(2.86 MiB > FUNCTION_SIZE_ERROR_THRESHOLD=1.91 MiB\).*aray.put\(\)"):
        captures.remote()
    with pytest.raises(ValueError, match=r"The actor class .*Holds is too large"):
        Holds.remote()
    monkeypatch.delenv("ARAY_FUNCTION_SIZE_ERROR_THRESHOLD")
    assert aray.get(captures.remote()) == 3_000_000


def test_actor_pool_push_of_an_actor_it_has_is_refused(cluster):
    from aray.util import ActorPool

    @aray.remote
    class Echo:
        def echo(self, x):
            time.sleep(0.2)
            return x

    busy, idle = Echo.remote(), Echo.remote()
    pool = ActorPool([busy, idle])
    pool.submit(lambda actor, v: actor.echo.remote(v), 1)  # takes the first: busy
    for actor in (busy, idle, aray.get(aray.put([busy]))[0]):
        with pytest.raises(ValueError, match="Actor already belongs to current ActorPool"):
            pool.push(actor)
    assert pool.get_next() == 1


def test_legacy_names():
    assert aray.ObjectID is aray.ObjectRef
