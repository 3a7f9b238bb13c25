"""Remote functions on a real local cluster (shared by the tests in this module)."""

import asyncio
import os
import pickle
import threading
import time

import numpy as np
import psutil
import pytest
from conftest import stays_true, task_state, wait_gone, wait_until

import aray
from aray.exceptions import TaskError
from aray.util.state import list_tasks

pytestmark = pytest.mark.usefixtures("cluster")


@aray.remote
def square(x):
    return x * x


@aray.remote
def identity(x):
    return x


def test_remote_function_returns_a_ref_at_once():
    ref = square.remote(4)
    assert isinstance(ref, aray.ObjectRef)
    assert aray.get(ref) == 16


def test_calling_a_remote_function_directly_is_a_type_error():
    with pytest.raises(TypeError, match=r"square.remote\(\.\.\.\)"):
        square(3)


def test_options_return_a_new_function_and_leave_the_original():
    two = identity.options(num_returns=2)
    a, b = two.remote((1, 2))
    assert aray.get([a, b]) == [1, 2]
    assert isinstance(identity.remote(1), aray.ObjectRef)
    assert identity._options["num_returns"] == 1


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown option 'num_cpu'"):
        identity.options(num_cpu=1)
    with pytest.raises(ValueError, match="num_cpus"):
        identity.options(resources={"CPU": 1})
    with pytest.raises(ValueError, match=">= 0"):
        identity.options(num_cpus=-1)
    with pytest.raises(TypeError):
        aray.remote(1, 2)


def test_async_def_functions_run_on_the_workers_loop():
    @aray.remote
    async def later(x):
        await asyncio.sleep(0.01)
        return x + 1

    assert aray.get([later.remote(i) for i in range(5)]) == [1, 2, 3, 4, 5]


def test_closures_are_pickled_by_value():
    offset = 10

    @aray.remote
    def add(x):
        return x + offset

    assert aray.get(add.remote(1)) == 11


def test_refs_as_arguments_are_dependencies():
    x = identity.remote(1)
    assert aray.get(identity.remote(x)) == 1
    assert aray.get(square.remote(square.remote(2))) == 16


def test_refs_nested_in_lists_arrive_as_refs():
    @aray.remote
    def inspect(items):
        return [type(i).__name__ for i in items], aray.get(items)

    names, values = aray.get(inspect.remote([aray.put(1), identity.remote(2)]))
    assert names == ["ObjectRef", "ObjectRef"]
    assert values == [1, 2]


def test_a_failed_dependency_fails_the_task_with_its_error():
    @aray.remote
    def fail():
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        aray.get(identity.remote(fail.remote()))


def test_nested_tasks_submit_and_get():
    @aray.remote
    def f():
        return 1

    @aray.remote
    def g():
        return [f.remote() for _ in range(4)]

    @aray.remote
    def h():
        return aray.get([f.remote() for _ in range(4)])

    assert aray.get(aray.get(g.remote())) == [1, 1, 1, 1]
    assert aray.get(h.remote()) == [1, 1, 1, 1]
    # more blocking outer tasks than CPUs: blocked workers lend their CPU
    assert aray.get([h.remote() for _ in range(6)], timeout=60) == [[1] * 4] * 6


def test_errors_are_task_errors_and_instances_of_the_original_type():
    @aray.remote
    def boom(msg):
        raise ValueError(msg)

    with pytest.raises(ValueError) as info:
        aray.get(boom.remote("bad input"))
    err = info.value
    assert isinstance(err, TaskError) and isinstance(err, aray.exceptions.ArayError)
    assert isinstance(err.cause, ValueError) and err.args == ("bad input",)
    text = str(err)
    assert "boom" in text and "pid=" in text and "raise ValueError(msg)" in text
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, ValueError) and isinstance(again, TaskError)
    assert (again.function_name, again.traceback_str, again.pid) == (
        err.function_name, err.traceback_str, err.pid)
    assert "boom" in again.function_name and "raise ValueError(msg)" in again.traceback_str
    assert isinstance(again.cause, ValueError) and again.cause.args == ("bad input",)
    assert "Catch it as ValueError, or as aray.exceptions.TaskError" in text


def test_an_exception_that_cannot_be_pickled_arrives_with_its_type_message_and_traceback():
    class Unpicklable(Exception):  # (local: pickled by value with the task)
        def __init__(self, msg):
            super().__init__(msg)
            self.lock = threading.Lock()

    @aray.remote
    def boom():
        raise Unpicklable("holds a lock")

    with pytest.raises(TaskError) as info:
        aray.get(boom.remote())
    err = info.value
    assert err.cause is None
    assert "Unpicklable" in str(err) and "holds a lock" in str(err)
    assert 'raise Unpicklable("holds a lock")' in err.traceback_str
    assert "did not pickle" in str(err)


def test_errors_answer_to_rays_names():
    ex = aray.exceptions
    assert ex.RayError is ex.ArayError and ex.RayTaskError is ex.TaskError
    assert ex.RayActorError is ex.ActorError and ex.RaySystemError is ex.AraySystemError
    for name, base in [("ActorUnavailableError", ex.ActorError), ("NodeDiedError", ex.ArayError),
                       ("TaskUnschedulableError", ex.ArayError),
                       ("ObjectReconstructionFailedError", ex.ObjectLostError),
                       ("OutOfDiskError", ex.ObjectStoreFullError),
                       ("ObjectFetchTimedOutError", ex.ObjectLostError),
                       ("OutOfMemoryError", ex.ArayError), ("RuntimeEnvSetupError", ex.ArayError),
                       ("UnserializableException", ex.ArayError)]:
        assert issubclass(getattr(ex, name), base), name

    @aray.remote
    def boom():
        raise KeyError("k")

    with pytest.raises(ex.RayTaskError):
        aray.get(boom.remote())


def test_nested_task_errors_keep_the_original_type():
    @aray.remote
    def inner():
        raise ZeroDivisionError("inner")

    @aray.remote
    def outer():
        return aray.get(inner.remote())

    with pytest.raises(ZeroDivisionError):
        aray.get(outer.remote())


def test_arguments_that_do_not_bind_are_refused_at_the_call_site():
    @aray.remote
    def add(a, b):
        return a + b

    @aray.remote
    def scale(x, *, factor=2):
        return x * factor

    for call, message in [(lambda: add.remote(1), "missing a required argument: 'b'"),
                          (lambda: add.remote(1, 2, 3), "too many positional arguments"),
                          (lambda: add.remote(1, 2, c=2), "unexpected keyword argument 'c'"),
                          (lambda: scale.options(num_cpus=0.5).remote(1, 3),
                           "too many positional arguments")]:
        with pytest.raises(TypeError, match=message) as info:
            call()
        assert ".remote()" in str(info.value)
    assert aray.get([add.remote(1, b=2), scale.remote(2, factor=5)]) == [3, 10]
    assert not [t for t in list_tasks() if t["name"] in ("add", "scale")
                and t["state"] == "FAILED"]  # the refused calls never became tasks


def test_max_calls_recycles_the_worker_and_frees_its_resources():
    @aray.remote(max_calls=2, max_retries=0)
    def pid():
        return os.getpid()

    pids = [aray.get(pid.remote(), timeout=30) for _ in range(6)]
    assert max(pids.count(p) for p in pids) <= 2, pids  # a worker runs at most 2 of them
    assert len(set(pids)) >= 3, pids
    for p in set(pids[:4]):  # the recycled ones are gone (the last may still be exiting)
        wait_until(lambda p=p: not psutil.pid_exists(p), 30, message=f"worker {p} to exit")
    wait_until(lambda: aray.available_resources().get("CPU") == 2.0, 30,
               message="the recycled workers' CPUs to be free again")
    refs = [pid.options(max_calls=0).remote() for _ in range(4)]  # 0: no limit
    assert len(aray.get(refs, timeout=30)) == 4
    with pytest.raises(ValueError, match="max_calls"):
        pid.options(max_calls=-1)


def test_num_returns():
    @aray.remote(num_returns=3)
    def three():
        return 1, 2, 3

    refs = three.remote()
    assert len(refs) == 3 and aray.get(refs) == [1, 2, 3]

    @aray.remote(num_returns=0)
    def nothing():
        pass

    assert nothing.remote() is None


def test_a_wrong_number_of_returns_says_so():
    with pytest.raises(ValueError, match="num_returns=2 but returned 3 values"):
        aray.get(identity.options(num_returns=2).remote((1, 2, 3))[0])
    with pytest.raises(ValueError, match="not a sequence"):
        aray.get(identity.options(num_returns=2).remote(5)[0])


def test_unpicklable_arguments_are_named_at_the_call_site():
    @aray.remote
    def pair(a, b):
        return a, b

    with pytest.raises(TypeError, match=r"argument 1 of .*pair.remote\(\) \(lock\)"):
        pair.remote(1, threading.Lock())
    with pytest.raises(TypeError, match="keyword argument 'x'"):
        identity.remote(x=threading.Lock())


def test_an_unpicklable_result_is_a_clear_error():
    @aray.remote
    def give_lock():
        return threading.Lock()

    with pytest.raises(TypeError, match="give_lock returned a lock, which cannot be pickled"):
        aray.get(give_lock.remote())


def test_unpicklable_function_is_refused_at_the_call_site():
    lock = threading.Lock()

    @aray.remote
    def uses_lock():
        return lock.locked()

    with pytest.raises(TypeError, match="cannot be pickled"):
        uses_lock.remote()


def test_large_arguments_and_results_go_through_the_store():
    arr = np.arange(2_000_000, dtype=np.int64)

    @aray.remote
    def total(a):
        return int(a.sum()), a.flags.writeable

    @aray.remote
    def make(n):
        return np.ones(n)

    assert aray.get(total.remote(arr)) == (int(arr.sum()), False)
    big = aray.get(make.remote(1_000_000))
    assert big.shape == (1_000_000,) and not big.flags.writeable


def test_put_once_pass_many():
    arr = np.zeros(1_000_000)
    ref = aray.put(arr)

    @aray.remote
    def size(a):
        return a.size

    assert aray.get([size.remote(ref) for _ in range(10)]) == [1_000_000] * 10


def test_retry_exceptions():
    marker = f"/tmp/aray-test-retry-{os.getpid()}-{time.time_ns()}"

    @aray.remote(max_retries=2, retry_exceptions=[OSError])
    def flaky():
        n = 0
        if os.path.exists(marker):
            with open(marker) as f:
                n = int(f.read())
        with open(marker, "w") as f:
            f.write(str(n + 1))
        if n < 2:
            raise OSError("transient")
        return n

    try:
        assert aray.get(flaky.remote()) == 2
    finally:
        os.unlink(marker)

    @aray.remote(max_retries=5, retry_exceptions=[OSError])
    def wrong_type():
        raise ValueError("not retried")

    with pytest.raises(ValueError):
        aray.get(wrong_type.remote())


def test_a_crashed_worker_is_retried_then_reported(tmp_path):
    marker = tmp_path / "attempts"

    @aray.remote(max_retries=2)
    def crash_twice():
        n = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(n + 1))
        if n < 2:
            os._exit(1)
        return n

    assert aray.get(crash_twice.remote(), timeout=60) == 2

    @aray.remote(max_retries=0)
    def crash():
        os._exit(1)

    with pytest.raises(aray.exceptions.WorkerCrashedError, match="max_retries"):
        aray.get(crash.remote(), timeout=60)
    # the cluster still works afterwards
    assert aray.get(square.remote(3)) == 9


def test_cancel_running_queued_and_forced():
    @aray.remote
    def sleeper(t):
        for _ in range(int(t * 100)):
            time.sleep(0.01)
        return t

    running = sleeper.remote(30)
    wait_until(lambda: task_state(running) == "RUNNING", 10, message="the sleeper to start")
    aray.cancel(running)
    with pytest.raises(aray.exceptions.TaskCancelledError):
        aray.get(running, timeout=30)

    @aray.remote
    def blocker():
        time.sleep(30)  # holds its CPU until cancelled

    blocked = [blocker.remote() for _ in range(3)]
    queued = sleeper.options(num_cpus=2).remote(1)  # cannot start while the others run
    aray.cancel(queued)
    with pytest.raises(aray.exceptions.TaskCancelledError):
        aray.get(queued, timeout=30)
    for ref in blocked:
        aray.cancel(ref, force=True)
    for ref in blocked:
        with pytest.raises(aray.exceptions.TaskCancelledError):
            aray.get(ref, timeout=30)
    assert aray.get(square.remote(5), timeout=30) == 25


def test_a_cancel_interrupts_a_task_blocked_in_get_and_fails_every_dependent(tmp_path):
    @aray.remote(num_cpus=0)
    def sleeper():
        time.sleep(60)

    @aray.remote(num_cpus=0)
    def waiter(boxed):
        aray.get(boxed[0])  # blocked until the sleeper ends: 60 s

    @aray.remote(num_cpus=0)
    def plus_one(x, marker):
        open(marker, "w").close()  # (never: its argument was cancelled)
        return x + 1

    slow = sleeper.remote()
    blocked = waiter.remote([slow])
    wait_until(lambda: task_state(blocked) == "RUNNING", 10, message="the waiter to start")
    aray.cancel(blocked)  # not forced: raised inside the get it is blocked in
    with pytest.raises(aray.exceptions.TaskCancelledError):
        aray.get(blocked, timeout=30)  # (before: it waited for the sleeper, and timed out)

    marker = str(tmp_path / "ran")
    first = plus_one.remote(slow, marker)
    chain = [first]
    for _ in range(5):
        chain.append(plus_one.remote(chain[-1], marker))
    aray.cancel(slow, force=True)
    for ref in [slow, *chain]:
        with pytest.raises(aray.exceptions.TaskCancelledError):
            aray.get(ref, timeout=30)
    assert not os.path.exists(marker)


def test_custom_resources_and_cluster_views():
    @aray.remote(resources={"Custom": 3})
    def needs_custom(x):
        return x * x

    assert aray.get(needs_custom.remote(2)) == 4
    total = aray.cluster_resources()
    assert total["CPU"] == 2 and total["Custom"] == 4
    assert any(k.startswith("node:") for k in total)
    nodes = aray.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"] and nodes[0]["Resources"]["CPU"] == 2
    wait_until(lambda: aray.available_resources().get("CPU") == 2, 10,
               message="both CPUs to be free (earlier tests' tasks ending)")
    assert aray.available_resources()["CPU"] == 2


def test_tasks_beyond_capacity_queue_and_all_finish():
    @aray.remote(num_cpus=1)
    def slow(i):
        time.sleep(0.05)
        return i

    start = time.monotonic()
    assert aray.get([slow.remote(i) for i in range(8)], timeout=60) == list(range(8))
    assert time.monotonic() - start >= 0.2 - 0.05  # 8 x 50 ms on 2 CPUs


def test_runtime_context_inside_a_task():
    @aray.remote
    def where():
        ctx = aray.get_runtime_context()
        return ctx.get_node_id(), ctx.get_task_id(), ctx.get_job_id(), ctx.get_actor_id()

    node, task, job, actor = aray.get(where.remote())

    @aray.remote
    def cluster_view():  # tasks see the cluster as the driver does
        return aray.cluster_resources()["CPU"], len(aray.nodes())

    assert aray.get(cluster_view.remote()) == (2.0, 1)
    ctx = aray.get_runtime_context()
    assert node == ctx.get_node_id() and job == ctx.get_job_id()
    assert task and ctx.get_task_id() is None and actor is None


def test_many_small_tasks():
    assert sum(aray.get([square.remote(i) for i in range(2000)])) == sum(
        i * i for i in range(2000))


@pytest.mark.parametrize("force", [False, True])
def test_cancel_is_recursive(tmp_path, force):
    ticks = tmp_path / "ticks"

    @aray.remote(num_cpus=0)
    def child(path):
        with open(f"{path}.who", "w") as f:  # so that the test can tell when it has stopped
            f.write(f"{os.getpid()} {aray.get_runtime_context().get_task_id()}")
        for _ in range(100):
            with open(path, "a") as f:
                f.write(".")
            time.sleep(0.05)

    @aray.remote(num_cpus=0)
    def parent(path):
        return aray.get(child.remote(path))

    ref = parent.remote(str(ticks))
    wait_until(lambda: ticks.exists() and len(ticks.read_text()) >= 3, 10,
               message="the child to tick three times")
    aray.cancel(ref, force=force)
    with pytest.raises(aray.exceptions.TaskCancelledError):
        aray.get(ref, timeout=30)
    pid, task_id = (tmp_path / "ticks.who").read_text().split()

    def child_ended():  # its task failed (cancelled), or its worker is gone (forced)
        rows = list_tasks(filters=[("task_id", "=", task_id)])
        return (rows and rows[0]["state"] == "FAILED") or not wait_gone([int(pid)], 0)

    wait_until(child_ended, 10, message="the child to notice the cancel")
    before = len(ticks.read_text())
    stays_true(lambda: len(ticks.read_text()) == before, 0.5, message="the child stays stopped")
    assert len(ticks.read_text()) == before, "the child kept running"


def test_plain_and_async_tasks_on_one_worker_run_one_at_a_time_in_order():
    # a worker runs plain tasks on its task thread and async def ones on its loop: whichever
    # holds the worker's queue runs its kind back to back, and hands the queue over at a task
    # of the other kind, so the tasks of one worker still run one at a time, in arrival order
    @aray.remote(num_cpus=2)
    def plain(i):
        start = time.monotonic()
        time.sleep(0.002)
        return os.getpid(), i, start, time.monotonic()

    @aray.remote(num_cpus=2)
    async def coro(i):
        start = time.monotonic()
        await asyncio.sleep(0.002)
        return os.getpid(), i, start, time.monotonic()

    kinds = [plain, plain, coro, plain, coro, coro, plain] * 10
    runs = aray.get([kind.remote(i) for i, kind in enumerate(kinds)], timeout=60)
    by_worker: dict[int, list] = {}
    for pid, i, start, end in runs:
        by_worker.setdefault(pid, []).append((i, start, end))
    mixed = 0
    for pid, seen in by_worker.items():
        seen.sort(key=lambda run: run[1])  # as they started
        assert [i for i, _, _ in seen] == sorted(i for i, _, _ in seen), "out of order"
        for (_, _, end), (_, start, _) in zip(seen, seen[1:]):
            assert end <= start, f"two tasks overlapped on worker {pid}"
        mixed += len({kinds[i] for i, _, _ in seen}) == 2
    assert mixed, "no worker ran both kinds: the test shows nothing"


def test_a_short_tasks_result_does_not_wait_for_the_long_task_queued_behind_it():
    # a plain task's answer may wait for the next ones (batched), but not for long
    @aray.remote(num_cpus=2)
    def short():
        time.sleep(0.3)  # the long one reaches the worker meanwhile, and waits in its queue
        return os.getpid()

    @aray.remote(num_cpus=2)
    def long(seconds):
        time.sleep(seconds)
        return os.getpid()

    aray.get(short.remote(), timeout=30)  # a worker leased for this shape
    for _ in range(3):
        first, second = short.remote(), long.remote(5)
        started = time.monotonic()
        first_pid = aray.get(first, timeout=30)
        took = time.monotonic() - started
        second_pid = aray.get(second, timeout=30)
        if first_pid == second_pid:  # the long one was queued behind it, on its worker
            assert took < 2.5, f"the short task's result came after {took:.1f} s"
            return
    pytest.skip("the two tasks never shared a worker")


def test_tasks_pushed_behind_another_move_to_a_free_worker():
    # the second task goes to the busy worker's queue first (a worker takes several), and
    # a worker leased for it then takes it back: the two run side by side, as Ray runs them
    @aray.remote
    def nap(seconds):
        start = time.monotonic()
        time.sleep(seconds)
        return os.getpid(), start, time.monotonic()

    for _ in range(3):
        (pid1, start1, end1), (pid2, start2, end2) = aray.get(
            [nap.remote(1.0), nap.remote(1.0)], timeout=60)
        assert pid1 != pid2
        assert start2 < end1 and start1 < end2, "the two tasks ran one after the other"


def test_a_crash_costs_no_retry_of_the_tasks_queued_behind_it():
    # one worker (each task takes both CPUs): the second task waits in its queue when the
    # first ends the process; it never started, so it runs again elsewhere at no cost
    @aray.remote(num_cpus=2, max_retries=0)
    def crash():
        time.sleep(0.3)
        os._exit(1)

    @aray.remote(num_cpus=2, max_retries=0)
    def fine():
        return "ran"

    crashed, after = crash.remote(), fine.remote()
    with pytest.raises(aray.exceptions.WorkerCrashedError):
        aray.get(crashed, timeout=60)
    assert aray.get(after, timeout=60) == "ran"


def test_cancel_a_task_queued_at_a_busy_worker():
    @aray.remote(num_cpus=2)
    def slow():
        time.sleep(1.0)
        return "slow"

    @aray.remote(num_cpus=2)
    def queued():
        return "ran"

    first, second = slow.remote(), queued.remote()
    aray.cancel(second)
    with pytest.raises(aray.exceptions.TaskCancelledError):
        aray.get(second, timeout=30)
    assert aray.get(first, timeout=30) == "slow"
