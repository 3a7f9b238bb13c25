"""aray.util.multiprocessing.Pool, the standard library's Pool API over actors, on the
shared 2-CPU cluster (each test ends its pools, which hold a CPU per actor)."""

import gc
import multiprocessing
import os
import pickle
import sys
import threading
import time
from multiprocessing.pool import RemoteTraceback

import cloudpickle
import pytest
from conftest import wait_gone, wait_until
from test_cluster import Cluster

from aray.exceptions import ActorDiedError
from aray.util.multiprocessing import Pool

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.timeout(120)]

# aray's workers cannot import this test module (it is not beside a driver script), so its
# functions travel by value, as those of a script's __main__ do
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x):
    return x * x


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def fail_on_three(x):
    if x == 3:
        raise ValueError(f"three: {x}")
    return x


def sleep_and_return(x, seconds=0.05):
    time.sleep(seconds)
    return x


def remember(key, value):
    os.environ[key] = value  # the initializer and the calls are pickled apart: no shared globals


def recall(key):
    return os.environ.get(key), os.getpid()


def broken_initializer():
    raise OSError("the initializer failed")


def pool_pids(pool):
    return [pid for pid in pool.map(pid_after, [0.3] * 4, chunksize=1)]


def test_every_call_gives_the_standard_librarys_results():
    with Pool(processes=2) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        assert pool.map(square, range(7), chunksize=3) == [x * x for x in range(7)]
        assert pool.map(square, []) == []
        assert pool.starmap(pow, [(2, 3), (3, 2), (10, 0)]) == [8, 9, 1]
        assert pool.apply(divmod, (17, 5)) == (3, 2)
        assert pool.apply(int, ("ff",), {"base": 16}) == 255
        assert pool.apply_async(square, (4,)).get(timeout=30) == 16
        assert pool.map_async(square, [1, 2]).get(timeout=30) == [1, 4]
        assert pool.starmap_async(pow, [(2, 5)]).get(timeout=30) == [32]
        assert list(pool.imap(square, iter(range(6)), chunksize=2)) == [0, 1, 4, 9, 16, 25]
        assert list(pool.imap(square, [])) == []
        assert sorted(pool.imap_unordered(square, range(6))) == [0, 1, 4, 9, 16, 25]


def test_map_without_chunksize_cuts_chunks_that_shrink_as_it_goes():
    from aray.util.multiprocessing import _guided_chunks

    for n, processes in [(100_000, 2), (10_000, 8), (7, 2), (1, 1)]:
        bounds = _guided_chunks(n, processes)
        assert [start for start, _ in bounds] == [0] + [end for _, end in bounds[:-1]]
        assert bounds[-1][1] == n
        sizes = [end - start for start, end in bounds]
        assert sizes == sorted(sizes, reverse=True)  # large first, small last
        assert sizes[-1] <= max(1, n // (processes * 64) + 1)
    assert len(_guided_chunks(100_000, 2)) < 20  # few calls for many items
    assert _guided_chunks(0, 2) == []


def test_the_work_runs_in_actors_spread_over_the_pool():
    with Pool(processes=2) as pool:
        pids = pool_pids(pool)
    assert os.getpid() not in pids
    # each 0.3 s item takes a call of its own (chunksize=1): both actors take some
    assert len(set(pids)) == 2, pids


def test_an_error_reaches_get_as_its_own_type_with_the_remote_traceback():
    with Pool(processes=2) as pool:
        with pytest.raises(ValueError, match="three: 3") as info:
            pool.map(fail_on_three, range(8), chunksize=2)
        assert type(info.value) is ValueError
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "fail_on_three" in str(info.value.__cause__)

        with pytest.raises(ValueError, match="three"):
            pool.apply(fail_on_three, (3,))
        failed = pool.apply_async(fail_on_three, (3,))
        failed.wait(30)
        assert failed.ready() and not failed.successful()
        # the pool keeps working after a failed call
        assert pool.map(square, range(4)) == [0, 1, 4, 9]

        results = pool.imap(fail_on_three, range(5))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three"):
            next(results)


def test_callbacks_run_once_with_the_whole_result_or_the_first_error():
    seen = []
    done = threading.Event()

    def record(value):
        seen.append(value)
        done.set()

    with Pool(processes=2) as pool:
        pool.map_async(square, range(5), chunksize=2, callback=record,
                       error_callback=record).wait(30)
        wait_until(done.is_set, 30, message="the callback of map_async")
        assert seen == [[0, 1, 4, 9, 16]]

        done.clear()
        pool.map_async(fail_on_three, range(6), chunksize=1, callback=record,
                       error_callback=record)
        wait_until(done.is_set, 30, message="the error callback of map_async")
        assert len(seen) == 2 and isinstance(seen[1], ValueError)

        done.clear()
        pool.apply_async(square, (9,), callback=record)
        wait_until(done.is_set, 30, message="the callback of apply_async")
        assert seen[2] == 81
        assert pool.apply(square, (2,)) == 4  # still running after its callbacks ran


def test_get_and_next_time_out_with_multiprocessings_timeout_error():
    with Pool(processes=1) as pool:
        slow = pool.apply_async(sleep_and_return, (1, 5))
        start = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError):
            slow.get(timeout=0.2)
        assert time.monotonic() - start < 3
        assert not slow.ready()
        with pytest.raises(ValueError, match="not ready"):
            slow.successful()
        results = pool.imap(sleep_and_return, [1])
        with pytest.raises(multiprocessing.TimeoutError):
            results.next(timeout=0.1)


def test_a_closed_pool_finishes_its_work_and_takes_no_more():
    pool = Pool(processes=2)
    pids = pool_pids(pool)
    pending = pool.map_async(sleep_and_return, range(4), chunksize=1)
    with pytest.raises(ValueError, match="Pool is still running"):
        pool.join()
    pool.close()
    for call in (lambda: pool.map(square, [1]), lambda: pool.apply(square, (1,)),
                 lambda: pool.imap(square, [1]), lambda: pool.starmap_async(pow, [(1, 1)]),
                 lambda: pool.__enter__()):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    pool.join()
    assert pending.get(timeout=0) == [0, 1, 2, 3]
    assert wait_gone(pids) == [], "the pool's actors outlived join()"


def test_terminate_ends_the_actors_and_fails_what_is_not_ready():
    pool = Pool(processes=2)
    pids = pool_pids(pool)
    slow = pool.map_async(sleep_and_return, [1, 2], chunksize=1)
    pool.terminate()
    with pytest.raises(RuntimeError, match="terminated"):
        slow.get(timeout=10)
    pool.join()
    assert wait_gone(pids) == [], "terminate() left the pool's actors running"
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])


def test_a_pool_dropped_while_running_ends_its_actors_after_its_work():
    pool = Pool(processes=2)
    pids = pool_pids(pool)
    pending = pool.map_async(sleep_and_return, range(4), chunksize=1)
    del pool
    gc.collect()
    assert pending.get(timeout=30) == [0, 1, 2, 3]  # the work given still ran
    assert wait_gone(pids) == [], "a collected pool left its actors running"


def test_initializer_runs_in_each_actor_and_its_error_raises_at_the_start():
    with Pool(processes=2, initializer=remember, initargs=("ARAY_POOL_TEST_KEY", "set")) as pool:
        values = pool.map(recall, ["ARAY_POOL_TEST_KEY"] * 4, chunksize=1)
    assert {value for value, _ in values} == {"set"}
    with pytest.raises(OSError, match="the initializer failed"):
        Pool(processes=1, initializer=broken_initializer)


def test_maxtasksperchild_replaces_an_actor_after_that_many_chunks():
    with Pool(processes=1, maxtasksperchild=1) as pool:
        pids = pool.map(pid_after, [0] * 3, chunksize=1)
    assert len(set(pids)) == 3, pids
    with Pool(processes=1, maxtasksperchild=2) as pool:
        pids = pool.map(pid_after, [0] * 4, chunksize=1)
    assert len(set(pids)) == 2, pids


def test_a_crashed_actor_fails_its_call_and_is_replaced():
    with Pool(processes=1) as pool:
        with pytest.raises(ActorDiedError):
            pool.apply(os._exit, (1,))
        assert pool.map(square, [3]) == [9]


def test_imap_reads_its_input_as_actors_have_room():
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            yield i

    with Pool(processes=2) as pool:
        results = pool.imap(sleep_and_return, items())
        assert next(results) == 0
        # a few calls in flight per actor: some items read ahead, not the whole input
        assert len(pulled) < 100, len(pulled)
        assert next(results) == 1


def test_bad_arguments_raise_as_the_standard_library():
    with pytest.raises(ValueError):
        Pool(processes=0)
    with pytest.raises(ValueError, match="CPUs"):
        Pool(processes=3)  # the cluster has 2
    with pytest.raises(ValueError):
        Pool(processes=1, maxtasksperchild=0)
    with Pool(processes=1) as pool:
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(square, [1], chunksize=0)
        with pytest.raises(NotImplementedError, match="pickled"):
            pickle.dumps(pool)


def test_a_pool_starts_a_cluster_when_there_is_none(run_script):
    result = run_script("""
        from aray.util.multiprocessing import Pool

        def square(x):
            return x * x

        assert not aray.is_initialized()
        with Pool(processes=2) as pool:
            assert aray.is_initialized()
            assert aray.cluster_resources()["CPU"] == 2
            print(pool.map(square, range(20000))[-1])
        report_pids()
        aray.shutdown()
    """)
    assert "399960001" in result.stdout
    result.assert_no_leftovers()


@pytest.mark.slow
def test_the_pool_spreads_over_the_nodes_of_the_cluster_at_its_address(tmp_path):
    """A head and a second node of 1 CPU each: a pool of 2 has an actor on each, whether
    the address is given as aray_address or as Ray's ray_address."""
    nodes = Cluster()
    try:
        head = nodes.start_head("--num-cpus", "1")
        second = nodes.join("--num-cpus", "1")
        for argument in ("aray_address", "ray_address"):
            out = nodes.driver(f"""
                from aray.util.multiprocessing import Pool

                def node_of(_):
                    time.sleep(0.3)  # long enough that each actor takes one of the items
                    return aray.get_runtime_context().get_node_id()

                with Pool(processes=2, {argument}={nodes.address!r}) as pool:
                    print("NODES", sorted(set(pool.map(node_of, [0, 1], chunksize=1))))
            """, tmp_path).stdout
            assert f"NODES {sorted([head['node_id'], second['node_id']])}" in out, out
    finally:
        nodes.stop()


def test_every_public_name_of_the_three_modules_has_a_docstring_with_an_example():
    import inspect

    import aray.util.joblib
    import aray.util.multiprocessing
    import aray.util.queue

    missing = []
    for module in (aray.util.multiprocessing, aray.util.queue, aray.util.joblib):
        for name in module.__all__:
            obj = getattr(module, name)
            if obj is multiprocessing.TimeoutError:
                continue  # the standard library's, re-exported as Ray's module does
            members = [(name, obj)] + [
                (f"{name}.{attr}", member) for attr, member in vars(obj).items()
                if inspect.isclass(obj) and not attr.startswith("_") and callable(member)]
            for label, member in members:
                if "Example" not in (inspect.getdoc(member) or ""):
                    missing.append(f"{module.__name__}.{label}")
    assert missing == []


# The pool's and the backend's examples end their pools: they share one cluster. The
# queue's leave their queues' actors behind, so each of those starts from a clean slate.
DOCTESTS = """
import doctest, importlib, sys
import aray
failed = 0
finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
for name in sys.argv[1:]:
    fresh = name.startswith("fresh:")
    for test in finder.find(importlib.import_module(name.removeprefix("fresh:"))):
        if test.examples:
            if not aray.is_initialized():
                aray.init(num_cpus=2)
            failed += runner.run(test).failed
            if fresh:
                aray.shutdown()
print("ATTEMPTED", runner.tries, "FAILED", failed)
aray.shutdown()
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_docstring_examples_of_the_pool_queue_and_joblib_modules_run():
    import subprocess

    proc = subprocess.run([sys.executable, "-c", DOCTESTS, "aray.util.multiprocessing",
                           "aray.util.joblib", "fresh:aray.util.queue"],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert int(proc.stdout.split("ATTEMPTED ")[1].split()[0]) > 100


@pytest.mark.slow
def test_the_pool_benchmark_runs_both_pools():
    import subprocess

    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_pool.py")
    proc = subprocess.run([sys.executable, script, "--items", "2000", "--ms", "0.5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "multiprocessing.Pool: start" in proc.stdout and "aray Pool:" in proc.stdout
    assert "ratio aray / multiprocessing (best maps): " in proc.stdout, proc.stdout
