"""Actors on a real local cluster: sync, async and threaded; names; failures; restarts."""

import asyncio
import os
import threading
import time
from collections import defaultdict

import psutil
import pytest
from conftest import task_state, wait_gone, wait_until

import aray
from aray.exceptions import ActorDiedError, TaskError
from aray.util import ActorPool
from aray.util.state import list_actors

pytestmark = pytest.mark.usefixtures("cluster")


@aray.remote
class Example:
    def __init__(self, x):
        self.x = x

    def set(self, x):
        self.x = x

    def get(self):
        return self.x

    def pid(self):
        return os.getpid()


def test_the_seed_example():
    e = Example.remote(1)
    assert aray.get(e.set.remote(2)) is None
    assert aray.get(e.get.remote()) == 2


def test_misuse_is_reported_at_the_call_site():
    with pytest.raises(TypeError, match=r"Instead of 'Example\(\)', use 'Example.remote\(\)'"):
        Example(1)
    e = Example.remote(1)
    with pytest.raises(AttributeError, match="no method 'nope'"):
        e.nope.remote()
    with pytest.raises(TypeError, match=r"get.remote\(\.\.\.\)"):
        e.get()
    with pytest.raises(ValueError, match="(invalid|unknown) option"):
        Example.options(max_concurency=2)


def test_each_actor_has_its_own_process_and_calls_run_in_order():
    a, b = Example.remote(0), Example.remote(0)
    pa, pb = aray.get([a.pid.remote(), b.pid.remote()])
    assert pa != pb and os.getpid() not in (pa, pb)

    @aray.remote
    class Recorder:
        def __init__(self):
            self.seen = []

        def add(self, i):
            self.seen.append(i)

        def seen_list(self):
            return self.seen

    r = Recorder.remote()
    for i in range(200):
        r.add.remote(i)
    assert aray.get(r.seen_list.remote()) == list(range(200))


def test_async_actor_runs_calls_concurrently():
    @aray.remote
    class Sleeper:
        def __init__(self):
            self.running = 0
            self.peak = 0

        async def nap(self, t):
            self.running += 1
            self.peak = max(self.peak, self.running)
            await asyncio.sleep(t)
            self.running -= 1
            return t

        async def peak_seen(self):
            return self.peak

    s = Sleeper.remote()
    start = time.monotonic()
    assert aray.get([s.nap.remote(0.3) for _ in range(20)]) == [0.3] * 20
    assert time.monotonic() - start < 2.0
    assert aray.get(s.peak_seen.remote()) == 20

    limited = Sleeper.options(max_concurrency=2).remote()
    aray.get([limited.nap.remote(0.05) for _ in range(8)])
    assert aray.get(limited.peak_seen.remote()) == 2


def _concurrency_probe():
    @aray.remote
    class Probe:
        def __init__(self):
            self.lock = threading.Lock()
            self.running = 0
            self.peak = 0

        def work(self):
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            time.sleep(0.1)
            with self.lock:
                self.running -= 1

        def peak_seen(self):
            return self.peak

    return Probe


def test_threaded_and_plain_actors():
    Probe = _concurrency_probe()
    threaded = Probe.options(max_concurrency=3).remote()
    aray.get([threaded.work.remote() for _ in range(9)])
    assert aray.get(threaded.peak_seen.remote()) == 3
    plain = Probe.remote()
    aray.get([plain.work.remote() for _ in range(4)])
    assert aray.get(plain.peak_seen.remote()) == 1


def test_concurrency_groups():
    @aray.remote(concurrency_groups={"io": 2})
    class Service:
        def __init__(self):
            self.running = defaultdict(int)
            self.peak = defaultdict(int)

        async def _track(self, group):
            self.running[group] += 1
            self.peak[group] = max(self.peak[group], self.running[group])
            await asyncio.sleep(0.05)
            self.running[group] -= 1

        @aray.method(concurrency_group="io")
        async def fetch(self):
            await self._track("io")

        async def compute(self):
            await self._track("default")

        async def peaks(self):
            return dict(self.peak)

    s = Service.options(max_concurrency=5).remote()
    aray.get([s.fetch.remote() for _ in range(6)] + [s.compute.remote() for _ in range(10)])
    assert aray.get(s.peaks.remote()) == {"io": 2, "default": 5}

    @aray.remote(concurrency_groups={"io": 1})
    class Threads:
        @aray.method(concurrency_group="io")
        def fetch(self):
            return threading.current_thread().name

        def compute(self):
            return threading.current_thread().name

    t = Threads.remote()
    assert "io" in aray.get(t.fetch.remote())
    assert "main" in aray.get(t.compute.remote())
    assert "io" in aray.get(t.compute.options(concurrency_group="io").remote())
    with pytest.raises(ValueError, match="'db' is not one of"):
        t.compute.options(concurrency_group="db")
    with pytest.raises(ValueError, match="concurrency group 'db'"):
        @aray.remote
        class Broken:
            @aray.method(concurrency_group="db")
            def f(self):
                pass


@aray.remote
class LoggingActor:
    def __init__(self):
        self.logs = defaultdict(list)

    def log(self, index, message):
        self.logs[index].append(message)

    def get_logs(self):
        return dict(self.logs)


def test_handles_travel_to_tasks_the_seeds_logging_actor():
    logging_actor = LoggingActor.remote()

    @aray.remote
    def task(actor, i):
        for j in range(3):
            actor.log.remote(i, f"step {j}")
        return i

    assert aray.get([task.remote(logging_actor, i) for i in range(5)]) == list(range(5))

    def all_logged():  # the tasks' calls are not awaited: they may still be on their way
        logs = aray.get(logging_actor.get_logs.remote())
        return logs if sum(len(v) for v in logs.values()) == 15 else None

    logs = wait_until(all_logged, 10, message="15 log lines at the logging actor")
    assert logs == {i: ["step 0", "step 1", "step 2"] for i in range(5)}


def test_handles_travel_to_other_actors():
    target = Example.remote("hello")

    @aray.remote
    class Forwarder:
        def __init__(self, other):
            self.other = other

        def ask(self):
            return aray.get(self.other.get.remote())

    assert aray.get(Forwarder.remote(target).ask.remote()) == "hello"


def test_named_actors():
    Example.options(name="config").remote({"lr": 0.1})
    assert aray.get(aray.get_actor("config").get.remote()) == {"lr": 0.1}
    with pytest.raises(ValueError, match="already exists"):
        Example.options(name="config").remote(None)
    same = Example.options(name="config", get_if_exists=True).remote(None)
    assert aray.get(same.get.remote()) == {"lr": 0.1}
    with pytest.raises(ValueError, match="no live actor named 'missing'"):
        aray.get_actor("missing")
    Example.options(name="config", namespace="other").remote("elsewhere")
    assert aray.get(aray.get_actor("config", namespace="other").get.remote()) == "elsewhere"
    assert aray.get(aray.get_actor("config").get.remote()) == {"lr": 0.1}
    aray.kill(aray.get_actor("config", namespace="other"))

    def name_free():
        try:
            aray.get_actor("config", namespace="other")
            return False
        except ValueError:
            return True

    wait_until(name_free, 10, message="a dead actor's name to be free again")
    again = Example.options(name="config", namespace="other").remote("second")
    assert aray.get(again.get.remote()) == "second"


def test_named_actor_from_a_task():
    Example.options(name="shared").remote(41)

    @aray.remote
    def read():
        return aray.get(aray.get_actor("shared").get.remote()) + 1

    assert aray.get(read.remote()) == 42


def test_many_idle_actors_fit_on_two_cpus_and_explicit_cpus_are_held():
    idle = [Example.remote(i) for i in range(6)]
    assert aray.get([a.get.remote() for a in idle], timeout=60) == list(range(6))
    holders = [Example.options(num_cpus=1).remote(i) for i in range(3)]
    refs = [h.get.remote() for h in holders]
    ready, pending = aray.wait(refs, num_returns=3, timeout=2)
    assert len(ready) == 2 and len(pending) == 1  # the third waits for a CPU
    aray.kill(holders[refs.index(ready[0])])  # its CPU returns, and the third starts
    assert aray.get(pending[0], timeout=30) == refs.index(pending[0])
    for h in holders + idle:
        aray.kill(h)
    wait_until(lambda: aray.available_resources().get("CPU") == 2, 10,
               message="the killed actors' CPUs to be free again")
    assert aray.available_resources()["CPU"] == 2


def test_methods_with_several_returns():
    @aray.remote
    class Splitter:
        @aray.method(num_returns=2)
        def split(self, x):
            return x, -x

        def three(self):
            return 1, 2, 3

    s = Splitter.remote()
    a, b = s.split.remote(4)
    assert aray.get([a, b]) == [4, -4]
    refs = s.three.options(num_returns=3).remote()
    assert aray.get(refs) == [1, 2, 3]


def test_streaming_from_tasks_and_actors():
    @aray.remote(num_returns="streaming")
    def produce(n):
        for i in range(n):
            yield i * i
            time.sleep(0.3)

    @aray.remote(num_returns="streaming")
    async def produce_async(n):
        for i in range(n):
            await asyncio.sleep(0.01)
            yield i

    @aray.remote
    class Stream:
        @aray.method(num_returns="streaming")
        def items(self, n):
            yield from range(n)

    @aray.remote
    class AsyncStream:
        @aray.method(num_returns="streaming")
        async def items(self, n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i

    start = time.monotonic()
    gen = produce.remote(5)
    first = next(iter(gen))
    assert aray.get(first) == 0
    assert time.monotonic() - start < 1.2  # well before the task ends (5 x 0.3 s)
    assert [aray.get(r) for r in gen] == [1, 4, 9, 16]
    assert [aray.get(r) for r in produce_async.remote(3)] == [0, 1, 2]
    assert [aray.get(r) for r in Stream.remote().items.remote(4)] == [0, 1, 2, 3]

    async def consume():
        return [await r async for r in AsyncStream.remote().items.remote(5)]

    assert asyncio.run(consume()) == [0, 1, 2, 3, 4]

    @aray.remote(num_returns="streaming")
    def breaks():
        yield 1
        raise KeyError("halfway")

    gen = breaks.remote()
    assert aray.get(next(gen)) == 1
    with pytest.raises(KeyError):
        next(gen)

    # as in Ray, generator functions and methods stream without being told to
    @aray.remote
    def plain_generator():
        yield "a"
        yield "b"

    @aray.remote
    class Plain:
        def items(self):
            yield from (1, 2)

    assert [aray.get(r) for r in plain_generator.remote()] == ["a", "b"]
    assert [aray.get(r) for r in Plain.remote().items.remote()] == [1, 2]


def test_method_errors_keep_the_actor_alive():
    @aray.remote
    class Fragile:
        def __init__(self):
            self.calls = 0

        def maybe(self, fail):
            self.calls += 1
            if fail:
                raise ValueError("asked to fail")
            return self.calls

    f = Fragile.remote()
    with pytest.raises(ValueError, match="asked to fail") as info:
        aray.get(f.maybe.remote(True))
    assert isinstance(info.value, TaskError)
    assert aray.get(f.maybe.remote(False)) == 2


def test_constructor_errors_kill_the_actor_with_its_traceback():
    @aray.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("cannot start")

        def f(self):
            return 1

    b = Broken.remote()
    for _ in range(2):
        with pytest.raises(ActorDiedError, match="cannot start") as info:
            aray.get(b.f.remote())
    assert "constructor" in str(info.value) and "Traceback" in str(info.value)


def test_kill_ends_an_actor_and_frees_its_process():
    e = Example.options(num_cpus=1).remote(1)
    pid = aray.get(e.pid.remote())
    aray.kill(e)
    with pytest.raises(ActorDiedError, match="killed"):
        aray.get(e.get.remote(), timeout=30)
    assert wait_gone([pid]) == [], "the killed actor's process lives on"
    with pytest.raises(TypeError):
        aray.kill("not an actor")


def test_a_crashed_actor_without_restarts_is_dead():
    e = Example.remote(1)
    pid = aray.get(e.pid.remote())
    os.kill(pid, 9)
    with pytest.raises(ActorDiedError):
        aray.get(e.get.remote(), timeout=30)


def test_restarts_rerun_the_constructor_and_calls_wait():
    @aray.remote(max_restarts=1)
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

        def pid(self):
            return os.getpid()

    c = Counter.remote()
    assert aray.get([c.incr.remote(), c.incr.remote()]) == [1, 2]
    pid = aray.get(c.pid.remote())
    os.kill(pid, 9)

    def restarted():  # a call sent before the death is known would be an interrupted one
        (row,) = list_actors(filters=[("actor_id", "=", c.actor_id)])
        return row["state"] == "ALIVE" and row["pid"] not in (pid, None)

    wait_until(restarted, 30, message="the actor to run again in a new process")
    assert aray.get(c.incr.remote(), timeout=30) == 1  # new instance, constructor re-ran
    os.kill(aray.get(c.pid.remote()), 9)  # restarts used up
    with pytest.raises(ActorDiedError):
        aray.get(c.incr.remote(), timeout=30)


def test_max_task_retries_reruns_an_interrupted_call(tmp_path):
    marker = tmp_path / "crashed"

    @aray.remote(max_restarts=1, max_task_retries=1)
    class Once:
        def work(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return "second time lucky"

    assert aray.get(Once.remote().work.remote(str(marker)), timeout=60) == "second time lucky"

    @aray.remote(max_restarts=1)
    class NoRetry:
        def work(self):
            os._exit(1)

    with pytest.raises(ActorDiedError, match="max_task_retries"):
        aray.get(NoRetry.remote().work.remote(), timeout=60)


def test_a_rerun_call_gets_its_arguments_again(tmp_path):
    """A call re-run after its actor restarted gets the same arguments: a stored argument
    (above the inline size) and a ref inside the arguments that only the call holds."""
    import numpy as np

    marker = tmp_path / "crashed"

    @aray.remote(max_restarts=1, max_task_retries=1)
    class Once:
        def work(self, path, array, boxed):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return type(array).__name__, int(array.sum()), aray.get(boxed[0], timeout=30)

    big = np.ones(1 << 20, dtype=np.uint8)  # 1 MiB: passed through the store
    ref = Once.remote().work.remote(str(marker), big, [aray.put("inside")])
    assert aray.get(ref, timeout=60) == ("ndarray", 1 << 20, "inside")


def test_runtime_context_in_an_actor():
    @aray.remote
    class Who:
        def ids(self):
            ctx = aray.get_runtime_context()
            return ctx.get_actor_id(), ctx.get_task_id()

    w = Who.remote()
    actor_id, task_id = aray.get(w.ids.remote())
    assert actor_id == w.actor_id and task_id


def test_actor_pool():
    @aray.remote
    class Doubler:
        def double(self, x):
            time.sleep(0.01 * (x % 3))
            return 2 * x

    pool = ActorPool([Doubler.remote() for _ in range(3)])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(10))) == [
        2 * i for i in range(10)]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(10))) == [
        2 * i for i in range(10)]
    pool.submit(lambda a, v: a.double.remote(v), 21)
    assert pool.has_next() and pool.get_next() == 42 and not pool.has_next()

    async def amain():
        ordered = [x async for x in pool.amap(lambda a, v: a.double.remote(v), range(6))]
        unordered = [x async for x in pool.amap_unordered(lambda a, v: a.double.remote(v),
                                                          range(6))]
        return ordered, sorted(unordered)

    assert asyncio.run(amain()) == ([0, 2, 4, 6, 8, 10], [0, 2, 4, 6, 8, 10])

    @aray.remote
    class Picky:
        def f(self, x):
            if x == 1:
                raise ValueError("no 1")
            return x

    picky = ActorPool([Picky.remote(), Picky.remote()])

    async def failing():
        return [x async for x in picky.amap(lambda a, v: a.f.remote(v), range(4))]

    with pytest.raises(ValueError):
        asyncio.run(failing())
    with pytest.raises(ValueError):
        list(picky.map(lambda a, v: a.f.remote(v), [1]))
    # a failed call gives its actor back: the pool keeps working
    while picky.has_next():
        try:
            picky.get_next(timeout=10)
        except ValueError:
            pass
    assert list(picky.map(lambda a, v: a.f.remote(v), [5, 6, 7])) == [5, 6, 7]


@pytest.mark.anyio
async def test_actor_calls_awaited_from_another_loop():
    e = Example.remote(5)
    assert await e.get.remote() == 5
    assert await asyncio.gather(*[e.get.remote() for _ in range(5)]) == [5] * 5


def test_actors_die_with_their_driver_and_infeasible_actors_warn(run_script):
    r = run_script("""
        aray.init(num_cpus=1)
        @aray.remote
        class A:
            def pid(self):
                return os.getpid()
        @aray.remote(resources={"TPU": 1})
        class NeedsTPU:
            def f(self):
                return 1
        a = A.remote()
        print("ACTOR", aray.get(a.pid.remote()))
        n = NeedsTPU.remote()
        ready, _ = aray.wait([n.f.remote()], timeout=1)
        print("READY", len(ready))
        report_pids()
    """)
    actor_pid = int(r.stdout.split("ACTOR ")[1].split()[0])
    assert "READY 0" in r.stdout
    assert "The actor NeedsTPU" in r.stderr and "cannot be scheduled" in r.stderr
    assert "TPU: 1.0" in r.stderr
    r.assert_no_leftovers()
    assert not psutil.pid_exists(actor_pid) or (
        psutil.Process(actor_pid).status() == psutil.STATUS_ZOMBIE)


def test_cancelling_calls_of_a_sync_actor():
    @aray.remote
    class Busy:
        def spin(self, seconds):
            # as in Ray, a cancel does not interrupt a running method (the actor's state
            # would be left half changed): the method asks, and returns early
            end = time.time() + seconds
            while time.time() < end:
                if aray.get_runtime_context().is_canceled():
                    return "noticed"
            return "finished"

        def quick(self):
            return "quick"

    b = Busy.remote()
    running = b.spin.remote(30)
    queued = b.spin.remote(30)
    wait_until(lambda: task_state(running) == "RUNNING", 10, message="the first call to start")
    aray.cancel(queued)
    aray.cancel(running)
    for ref in (running, queued):
        with pytest.raises(aray.exceptions.TaskCancelledError):
            aray.get(ref, timeout=20)
    assert aray.get(b.quick.remote(), timeout=20) == "quick"  # the actor lives on
