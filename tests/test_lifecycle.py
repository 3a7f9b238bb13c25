"""init/shutdown and process cleanup, each in a fresh interpreter with its own cluster."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import PRELUDE, wait_gone


def test_init_returns_quickly_and_shutdown_leaves_nothing(run_script):
    r = run_script("""
        t0 = time.perf_counter()
        aray.init(num_cpus=2)
        assert aray.is_initialized()
        @aray.remote
        def f(x):
            return x * x
        assert aray.get(f.remote(4)) == 16
        print("FIRST", time.perf_counter() - t0)
        from aray import _global
        store = _global.core().store.path
        assert os.path.isdir(store)
        report_pids()
        aray.shutdown()
        aray.shutdown()  # twice is fine
        assert not aray.is_initialized()
        assert not os.path.exists(store), "store directory left behind"
        print("OK")
    """)
    assert "OK" in r.stdout
    r.assert_no_leftovers()


def test_second_init_and_unknown_keywords(run_script):
    r = run_script("""
        aray.init(num_cpus=1)
        try:
            aray.init(num_cpus=1)
        except RuntimeError as e:
            assert "ignore_reinit_error" in str(e), e
            print("REINIT")
        aray.init(num_cpus=1, ignore_reinit_error=True)
        report_pids()
        aray.shutdown()
        try:
            aray.init(num_cpu=2)
        except TypeError as e:
            print("TYPEERROR", e)
        assert not aray.is_initialized()
        try:
            aray.nodes()
        except aray.exceptions.NotInitializedError as e:
            print("NOTINIT", e)
        os.environ["ARAY_ENABLE_AUTO_CONNECT"] = "0"
        try:
            aray.get(aray.put(1))
        except aray.exceptions.NotInitializedError as e:
            print("NOAUTO", e)
    """)
    assert "NOAUTO" in r.stdout
    assert "REINIT" in r.stdout and "TYPEERROR" in r.stdout and "NOTINIT" in r.stdout
    assert "aray.init()" in r.stdout
    r.assert_no_leftovers()


@pytest.mark.parametrize("ending", ["exit", "exception"])
def test_interpreter_exit_without_shutdown_leaves_nothing(run_script, ending):
    r = run_script(f"""
        aray.init(num_cpus=2)
        @aray.remote
        def f():
            return 1
        aray.get([f.remote() for _ in range(4)])
        report_pids()
        if {ending!r} == "exception":
            raise SystemError("unhandled")
    """, expect_ok=(ending == "exit"))
    if ending == "exception":
        assert r.returncode != 0 and "unhandled" in r.stderr
    r.assert_no_leftovers()


def test_sigkilled_driver_leaves_nothing(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(PRELUDE + """
aray.init(num_cpus=2)
@aray.remote
def f():
    return 1
aray.get([f.remote() for _ in range(4)])
report_pids()
time.sleep(60)  # until the test SIGKILLs it
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("PIDS "):
            line = proc.stdout.readline()
            assert line, "driver ended early"
        import json

        pids = json.loads(line[5:])
        assert len(pids) >= 3  # node process, template process, workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_gone(pids) == [], "processes outlived a SIGKILLed driver"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_init_inside_a_running_loop_does_not_block_it(run_script):
    r = run_script("""
        import threading
        async def main():
            ticks = 0
            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)
            t = asyncio.create_task(ticker())
            aray.init(num_cpus=1)           # returns before the cluster is up
            @aray.remote
            def f(x):
                return x + 1
            ref = f.remote(1)               # fine before the links are up
            assert await ref == 2
            assert not any(th.name == "aray-loop" for th in threading.enumerate())
            try:
                aray.get(ref)
            except RuntimeError as e:
                assert "await" in str(e), e
                print("GET-ON-LOOP")
            assert ticks > 5, ticks          # the loop kept running during start-up
            report_pids()
            await aray.aio.shutdown()
            t.cancel()
            print("OK")
        asyncio.run(main())
    """)
    assert "GET-ON-LOOP" in r.stdout and "OK" in r.stdout
    r.assert_no_leftovers()


def test_explicit_async_init_and_shutdown(run_script):
    r = run_script("""
        async def main():
            await aray.aio.init(num_cpus=1)
            @aray.remote
            async def f(x):
                await asyncio.sleep(0)
                return x * 2
            assert await asyncio.gather(*[f.remote(i) for i in range(3)]) == [0, 2, 4]
            report_pids()
            await aray.aio.shutdown()
            assert not aray.is_initialized()
            print("OK")
        asyncio.run(main())
    """)
    assert "OK" in r.stdout
    r.assert_no_leftovers()


def test_worker_output_reaches_the_driver_with_a_prefix(run_script):
    r = run_script("""
        aray.init(num_cpus=1)
        @aray.remote
        def talk(x):
            print("hello from", x)
            print("to stderr", file=sys.stderr)
            return os.getpid()
        out, err = echo_output()
        pid = aray.get(talk.remote(7))
        wait_until(lambda: "hello from 7" in out.text() and "to stderr" in err.text(), 10,
                   message="the worker's lines on the driver's stdout and stderr")
        print("PID", pid)
        aray.shutdown()
    """)
    pid = r.stdout.split("PID ")[1].split()[0]
    assert f"(talk pid={pid}) hello from 7" in r.stdout
    assert f"(talk pid={pid}) to stderr" in r.stderr


def test_log_to_driver_false_keeps_worker_output_away(run_script):
    r = run_script("""
        aray.init(num_cpus=1, log_to_driver=False)
        @aray.remote
        def talk():
            print("should not appear")
        out, err = echo_output()
        aray.get(talk.remote())
        stays_true(lambda: "should not appear" not in out.text() + err.text(), 0.5,
                   message="no worker output on the driver's terminal")
        aray.shutdown()
    """)
    assert "should not appear" not in r.stdout + r.stderr


def test_nested_blocking_tasks_do_not_deadlock_on_one_cpu(run_script):
    r = run_script("""
        aray.init(num_cpus=1)
        @aray.remote
        def leaf(i):
            return i
        @aray.remote
        def middle(i):
            return sum(aray.get([leaf.remote(i) for _ in range(3)]))
        @aray.remote
        def top():
            return aray.get([middle.remote(i) for i in range(4)])
        print("RESULT", aray.get([top.remote() for _ in range(3)], timeout=60))
        report_pids()
        aray.shutdown()
    """, timeout=90)
    assert "RESULT [[0, 3, 6, 9], [0, 3, 6, 9], [0, 3, 6, 9]]" in r.stdout
    r.assert_no_leftovers()


def test_a_get_in_a_thread_of_a_task_lends_the_tasks_cpu_on_one_cpu(run_script):
    # the single-ref get that a thread of a task makes lends the task's CPU too, or the
    # child could never run on this one-CPU cluster
    r = run_script("""
        import threading
        aray.init(num_cpus=1)
        @aray.remote
        def child():
            return 7
        @aray.remote
        def parent():
            out = []
            t = threading.Thread(target=lambda: out.append(aray.get(child.remote())))
            t.start()
            t.join()
            return out
        print("RESULT", aray.get(parent.remote(), timeout=60))
        report_pids()
        aray.shutdown()
    """, timeout=90)
    assert "RESULT [7]" in r.stdout, r.stdout + r.stderr
    r.assert_no_leftovers()


def test_gpu_ids_are_assigned(run_script):
    r = run_script("""
        aray.init(num_cpus=2, num_gpus=2)
        @aray.remote(num_gpus=1)
        def which():
            time.sleep(0.2)
            return aray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")
        a, b = aray.get([which.remote(), which.remote()])
        assert sorted(a[0] + b[0]) == [0, 1], (a, b)
        assert a[1] == str(a[0][0]) and b[1] == str(b[0][0])
        assert aray.cluster_resources()["GPU"] == 2
        assert aray.get_gpu_ids() == []
        print("OK")
        aray.shutdown()
    """)
    assert "OK" in r.stdout


def test_infeasible_task_warns_once_and_stays_pending(run_script):
    r = run_script("""
        aray.init(num_cpus=2, resources={"CustomResource1": 1, "CustomResource2": 4})
        @aray.remote(resources={"CustomResource2": 3})
        def g(x):
            return x * x
        @aray.remote(resources={"CustomResource1": 2})
        def f(x):
            return x
        print("G", aray.get(g.remote(2)))
        ref = f.remote(2)
        ready, pending = aray.wait([ref], timeout=1)
        print("PENDING", len(pending))
        aray.shutdown()
    """)
    assert "G 4" in r.stdout and "PENDING 1" in r.stdout
    assert r.stderr.count("cannot be scheduled right now") == 1
    assert "{CPU: 1.0, CustomResource1: 2.0}" in r.stderr
    assert "CustomResource1: 1.0" in r.stderr


def test_main_module_functions_and_classes_travel_by_value(run_script):
    r = run_script("""
        class Point:
            def __init__(self, x):
                self.x = x
        def helper(p):
            return p.x * 10
        @aray.remote
        def use(p):
            return helper(p), type(p).__name__
        aray.init(num_cpus=1)
        print("RESULT", aray.get(use.remote(Point(4))))
        aray.shutdown()
    """)
    assert "RESULT (40, 'Point')" in r.stdout


def test_bad_init_arguments(run_script):
    r = run_script("""
        for kwargs in ({"num_cpus": -1}, {"num_cpus": "two"}, {"resources": {"CPU": 1}},
                       {"resources": {"x": -1}}):
            try:
                aray.init(**kwargs)
            except (TypeError, ValueError) as e:
                print("ERR", type(e).__name__, e)
        assert not aray.is_initialized()
    """)
    assert r.stdout.count("ERR") == 4
    assert "num_cpus must be >= 0" in r.stdout
    assert "use num_cpus/num_gpus instead of 'CPU'" in r.stdout


def test_token_and_redis_password_alias(run_script):
    r = run_script("""
        aray.init(num_cpus=1, _redis_password="P.4.redis")
        from aray import _global
        assert _global.core().token == "P.4.redis"
        assert aray.get(aray.put(5)) == 5
        aray.shutdown()
        aray.init(num_cpus=1, token="another-secret")
        assert _global.core().token == "another-secret"
        aray.shutdown()
        print("OK")
    """)
    assert "OK" in r.stdout


def test_async_tasks_awaiting_nested_tasks_do_not_deadlock_on_one_cpu(run_script):
    r = run_script("""
        aray.init(num_cpus=1)
        @aray.remote
        def leaf(i):
            return i
        @aray.remote
        async def middle(i):
            return sum(await asyncio.gather(*[leaf.remote(i) for _ in range(3)]))
        @aray.remote
        async def top():
            return await asyncio.gather(*[middle.remote(i) for i in range(3)])
        print("RESULT", aray.get([top.remote() for _ in range(2)], timeout=60))
        aray.shutdown()
    """, timeout=90)
    assert "RESULT [[0, 3, 6], [0, 3, 6]]" in r.stdout


def test_a_killed_nodes_store_is_removed_by_the_next_init(run_script):
    # the node and its driver both killed (say by the OOM killer): nobody cleaned up
    first = run_script("""
        import signal
        aray.init(num_cpus=1)
        from aray import _global
        core = _global.core()
        print("FILES", core.store.path, core.store.spill_path, flush=True)
        report_pids()
        os.kill(core.cluster.proc.pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    """, expect_ok=False)
    first.assert_no_leftovers()
    store, spill = first.stdout.split("FILES ")[1].split()[:2]
    assert os.path.isdir(store) and os.path.isdir(spill)
    r = run_script(f"""
        aray.init(num_cpus=1)
        print("GONE", not os.path.exists({store!r}), not os.path.exists({spill!r}))
        aray.shutdown()
    """)
    assert "GONE True True" in r.stdout


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@pytest.mark.parametrize("user_set", [False, True], ids=["unset", "set-by-user"])
def test_numerical_libraries_get_as_many_threads_as_the_task_has_cpus(run_script, monkeypatch,
                                                                      user_set):
    for var in _THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    if user_set:
        monkeypatch.setenv("OMP_NUM_THREADS", "7")
    r = run_script("""
        aray.init(num_cpus=3)
        VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
        @aray.remote
        def threads():
            return [os.environ.get(v) for v in VARS]
        @aray.remote
        class Holder:
            def threads(self):
                return [os.environ.get(v) for v in VARS]
        print("ONE", aray.get(threads.remote()))
        print("THREE", aray.get(threads.options(num_cpus=3).remote()))
        print("HALF", aray.get(threads.options(num_cpus=0.5).remote()))
        print("ACTOR", aray.get(Holder.remote().threads.remote()))
        print("ACTOR2", aray.get(Holder.options(num_cpus=2).remote().threads.remote()))
        aray.shutdown()
    """)
    first = "7" if user_set else None
    for label, n in (("ONE", "1"), ("THREE", "3"), ("HALF", "1"), ("ACTOR", "1"),
                     ("ACTOR2", "2")):
        expected = [first or n, n, n, n, n]
        assert f"{label} {expected}" in r.stdout, r.stdout


def test_a_get_blocked_in_another_thread_ends_when_the_runtime_shuts_down(run_script):
    r = run_script("""
        import threading
        aray.init(num_cpus=1)
        @aray.remote
        def slow():
            time.sleep(60)
        ref = slow.remote()
        outcome = []
        def getter():
            try:
                aray.get(ref)
                outcome.append("returned")
            except Exception as exc:
                outcome.append(type(exc).__name__)
        t = threading.Thread(target=getter)
        t.start()
        time.sleep(0.5)  # (the getter blocks meanwhile; nothing here waits for it)
        report_pids()
        aray.shutdown()
        t.join(30)
        assert not t.is_alive(), "aray.get() still blocks after aray.shutdown()"
        print("OUTCOME", outcome)
    """)
    assert "OUTCOME ['" in r.stdout, r.stdout + r.stderr
    assert "returned" not in r.stdout
    r.assert_no_leftovers()
