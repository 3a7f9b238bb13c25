"""The actor side of a worker as Ray's programs expect it (issue 15), on a real cluster.

Concurrency groups isolate (an async actor's groups run on event loops of their own, a
threaded actor's on threads of their own); a blocking ``aray.get`` works inside an async
actor; ``exit_actor()``, ``__ray_terminate__`` and ``__ray_ready__``; an ``async def
__init__`` is awaited; ``is_canceled()`` lets a sync method notice its cancel; a streaming
generator's error reaches the consumer after the items yielded before it.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time

import pytest
from conftest import task_state, wait_gone, wait_until

import aray
from aray.exceptions import ActorDiedError, TaskCancelledError
from aray.util.state import list_actors

pytestmark = pytest.mark.usefixtures("cluster")


@aray.remote
class Signal:
    """Calls of ``wait`` return once ``send`` was called (Ray's tests' SignalActor)."""

    def __init__(self):
        self.event = asyncio.Event()
        self.waiters = 0

    async def wait(self):
        self.waiters += 1
        await self.event.wait()
        self.waiters -= 1

    async def send(self):
        self.event.set()

    async def waiting(self):
        return self.waiters


def actor_state(handle) -> str | None:
    rows = list_actors(filters=[("actor_id", "=", handle.actor_id)])
    return rows[0]["state"] if rows else None


# --- 1. concurrency groups isolate ---------------------------------------------------------


def test_each_group_of_an_async_actor_has_a_loop_and_a_thread_of_its_own():
    @aray.remote(concurrency_groups={"slow": 1, "fast": 1})
    class Service:
        @aray.method(concurrency_group="slow")
        async def block(self, seconds):
            time.sleep(seconds)  # blocks its group's loop: only that group waits
            return threading.get_ident()

        @aray.method(concurrency_group="fast")
        async def fast(self):
            return threading.get_ident()

        async def nap(self, seconds):  # the default group
            time.sleep(seconds)
            return threading.get_ident()

        async def where(self):
            return threading.get_ident(), threading.current_thread() is threading.main_thread()

    s = Service.remote()
    default_thread, on_main = aray.get(s.where.remote())
    assert not on_main  # not the worker's main thread, where the runtime's loop runs
    blocked = s.block.remote(6)
    wait_until(lambda: task_state(blocked) == "RUNNING", 10, message="the slow call to start")
    fast_thread = aray.get(s.fast.remote(), timeout=3)  # answers while "slow" is blocked
    assert aray.get(s.where.remote(), timeout=3)[0] == default_thread
    napping = s.nap.remote(6)
    wait_until(lambda: task_state(napping) == "RUNNING", 10, message="the default call to start")
    assert aray.get(s.fast.remote(), timeout=3) == fast_thread  # the default group is blocked
    slow_thread = aray.get(blocked, timeout=30)
    assert aray.get(napping, timeout=30) == default_thread
    assert len({default_thread, fast_thread, slow_thread}) == 3


def test_each_group_of_a_threaded_actor_has_threads_of_its_own():
    @aray.remote(concurrency_groups={"io": 2})
    class Threads:
        @aray.method(concurrency_group="io")
        def io(self, signal):
            aray.get(signal.wait.remote())
            return threading.get_ident()

        def main(self):
            return threading.get_ident()

    signal = Signal.remote()
    t = Threads.remote()
    main_thread = aray.get(t.main.remote())
    waiting = [t.io.remote(signal) for _ in range(2)]
    # both io calls run at once, each on a thread of the group; the default group answers
    wait_until(lambda: aray.get(signal.waiting.remote()) == 2, 10,
               message="both io calls to run at once")
    assert aray.get(t.main.remote(), timeout=5) == main_thread
    aray.get(signal.send.remote())
    io_threads = aray.get(waiting, timeout=10)
    assert len(set(io_threads)) == 2 and main_thread not in io_threads


def test_a_plain_actor_runs_its_constructor_and_methods_on_one_thread():
    # as in Ray: what must be used on the thread that made it works (an sqlite connection)
    @aray.remote
    class Store:
        def __init__(self):
            import sqlite3

            self.thread = threading.get_ident()
            self.db = sqlite3.connect(":memory:")
            self.db.execute("create table kv (k text, v text)")

        def put(self, k, v):
            self.db.execute("insert into kv values (?, ?)", (k, v))
            return threading.get_ident() == self.thread

        def get(self, k):
            return self.db.execute("select v from kv where k = ?", (k,)).fetchone()[0]

    store = Store.remote()
    assert aray.get(store.put.remote("a", "1"), timeout=30) is True
    assert aray.get(store.get.remote("a"), timeout=30) == "1"


# --- 2. a blocking get inside an async actor -----------------------------------------------


@aray.remote
def square(x):
    return x * x


def test_a_blocking_get_works_inside_an_async_actor():
    @aray.remote
    class Asker:
        def __init__(self):
            self.first = aray.get(square.remote(3))  # the constructor runs on the loop too

        async def ask(self, x):
            ready, _ = aray.wait([square.remote(x)], timeout=30)
            return self.first, aray.get(square.remote(x)), len(ready)

        def ask_sync(self, xs):  # a plain method of an async actor runs on its loop
            return aray.get([square.remote(x) for x in xs])

        async def ask_awaiting(self, x):
            return await square.remote(x)

    a = Asker.remote()
    assert aray.get(a.ask.remote(4), timeout=30) == (9, 16, 1)
    assert aray.get(a.ask_sync.remote([1, 2, 3]), timeout=30) == [1, 4, 9]
    assert aray.get(a.ask_awaiting.remote(5), timeout=30) == 25


def test_a_blocking_get_in_an_async_task_says_what_to_await():
    # an async task runs on the worker's runtime loop: blocking it would deadlock
    @aray.remote
    async def blocking():
        return aray.get(square.remote(2))

    with pytest.raises(RuntimeError, match="await"):
        aray.get(blocking.remote(), timeout=30)


def test_a_blocking_get_inside_an_async_actor_warns_once(run_script):
    r = run_script("""
        aray.init(num_cpus=1)
        out, err = echo_output()

        @aray.remote
        def one():
            return 1

        @aray.remote
        class Asker:
            async def ask(self):
                return aray.get(one.remote())

        a = Asker.remote()
        assert aray.get([a.ask.remote(), a.ask.remote()]) == [1, 1]
        wait_until(lambda: "blocking aray.get inside an async actor" in err.text(), 10,
                   message="the warning")
        aray.shutdown()
        print("WARNINGS", err.text().count("blocking aray.get inside an async actor"))
    """)
    assert "WARNINGS 1" in r.stdout, r.stdout + r.stderr


# --- 3. exit_actor, __ray_terminate__, __ray_ready__ ---------------------------------------


def _exiting_actor(is_async: bool):
    class Exiting:
        def __init__(self, marker):
            self.marker = marker
            atexit.register(self._at_exit)

        def _at_exit(self):
            with open(self.marker, "w") as f:
                f.write("atexit ran")

        def pid(self):
            return os.getpid()

        def slow(self, seconds):
            time.sleep(seconds)
            return "slow done"

    if is_async:
        async def leave(self):
            aray.actor.exit_actor()
    else:
        def leave(self):
            try:
                aray.actor.exit_actor()
            except Exception:  # exit_actor() is no Exception: this does not stop it
                return "caught"
    Exiting.leave = leave
    return aray.remote(max_restarts=2)(Exiting)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_exit_actor_ends_the_actor_for_good_and_runs_atexit(tmp_path, is_async):
    marker = tmp_path / "atexit"
    actor = _exiting_actor(is_async).remote(str(marker))
    pid = aray.get(actor.pid.remote())
    with pytest.raises(ActorDiedError, match=r"leave\(\) called exit_actor\(\)"):
        aray.get(actor.leave.remote(), timeout=30)
    # (the file exists from its open() on: wait for what the handler writes)
    wait_until(lambda: marker.exists() and marker.read_text() == "atexit ran", 10,
               message="the actor's atexit handler to run")
    assert wait_gone([pid], 30) == [], "the actor's process outlived exit_actor()"
    wait_until(lambda: actor_state(actor) == "DEAD", 10, message="the head to mark it dead")
    with pytest.raises(ActorDiedError):  # not restarted, though max_restarts=2
        aray.get(actor.pid.remote(), timeout=30)
    row = list_actors(filters=[("actor_id", "=", actor.actor_id)])[0]
    assert row["restarts"] == 0
    assert row["death_cause"] == "it ended itself (exit_actor() or __ray_terminate__)"


def test_exit_actor_fails_the_calls_queued_behind_it(tmp_path):
    actor = _exiting_actor(False).options(max_concurrency=2).remote(str(tmp_path / "m"))
    running = actor.slow.remote(30)
    wait_until(lambda: task_state(running) == "RUNNING", 10, message="the slow call to start")
    leaving = actor.leave.remote()
    with pytest.raises(ActorDiedError):
        aray.get(leaving, timeout=30)
    with pytest.raises(ActorDiedError):  # still running when the actor ended: fails at once
        aray.get(running, timeout=10)


def test_exit_actor_outside_an_actor_raises_type_error():
    import aray.actor

    with pytest.raises(TypeError, match="inside a method of an actor"):
        aray.actor.exit_actor()

    @aray.remote
    def task():
        import aray.actor

        aray.actor.exit_actor()

    with pytest.raises(TypeError, match="aray.kill"):
        aray.get(task.remote(), timeout=30)


def test_ray_terminate_ends_the_actor_after_the_calls_made_before(tmp_path):
    marker = tmp_path / "atexit"
    actor = _exiting_actor(False).remote(str(marker))
    assert aray.get(actor.__ray_ready__.remote(), timeout=30) is True
    pid = aray.get(actor.pid.remote())
    before = [actor.slow.remote(0.2) for _ in range(3)]
    terminating = actor.__ray_terminate__.remote()
    assert aray.get(before, timeout=30) == ["slow done"] * 3
    with pytest.raises(ActorDiedError, match="__ray_terminate__"):
        aray.get(terminating, timeout=30)
    with pytest.raises(ActorDiedError):
        aray.get(actor.pid.remote(), timeout=30)
    wait_until(lambda: marker.exists(), 10, message="the actor's atexit handler to run")
    assert wait_gone([pid], 30) == []
    wait_until(lambda: actor_state(actor) == "DEAD", 10, message="the head to mark it dead")


def test_ray_terminate_waits_for_the_running_calls_of_an_async_actor():
    @aray.remote
    class Waiter:
        async def wait_for(self, signal):
            await signal.wait.remote()
            return "released"

    signal = Signal.remote()
    w = Waiter.remote()
    assert aray.get(w.__ray_ready__.remote(), timeout=30) is True
    running = w.wait_for.remote(signal)
    wait_until(lambda: aray.get(signal.waiting.remote()) == 1, 10, message="the call to wait")
    terminating = w.__ray_terminate__.remote()
    with pytest.raises(ActorDiedError):  # made after it: refused
        aray.get(w.wait_for.remote(signal), timeout=30)
    aray.get(signal.send.remote())
    assert aray.get(running, timeout=30) == "released"
    with pytest.raises(ActorDiedError):
        aray.get(terminating, timeout=30)


# --- 4. async def __init__ -----------------------------------------------------------------


def test_an_async_constructor_is_awaited():
    @aray.remote
    class Connected:
        async def __init__(self, name):
            await asyncio.sleep(0.05)
            self.name = name
            self.lock = asyncio.Lock()  # made on the loop the methods run on

        async def hello(self):
            async with self.lock:
                return f"hello {self.name}"

    @aray.remote
    class OnlySyncMethods:
        async def __init__(self):
            await asyncio.sleep(0)
            self.ready = True

        def is_ready(self):
            return self.ready

    assert aray.get(Connected.remote("aray").hello.remote(), timeout=30) == "hello aray"
    assert aray.get(OnlySyncMethods.remote().is_ready.remote(), timeout=30) is True

    @aray.remote
    class Failing:
        async def __init__(self):
            await asyncio.sleep(0)
            raise ValueError("no connection")

        async def f(self):
            return 1

    with pytest.raises(ActorDiedError, match="no connection"):
        aray.get(Failing.remote().f.remote(), timeout=30)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_call_named_with_options_goes_by_that_name(is_async):
    from aray.exceptions import TaskError
    from aray.util.state import list_tasks

    class Named:
        def name(self):
            return aray.get_runtime_context().get_task_name()

        def fail(self):
            raise ValueError("bad input")

    if is_async:
        async def name(self):
            return aray.get_runtime_context().get_task_name()
        Named.name = name
    actor = aray.remote(Named).remote()
    assert aray.get(actor.name.remote(), timeout=30) == "Named.name"
    ref = actor.name.options(name="nightly report").remote()
    assert aray.get(ref, timeout=30) == "nightly report"
    task_id = ref.hex()[:-8]

    def row():
        rows = list_tasks(filters=[("task_id", "=", task_id)])
        return rows[0] if rows and rows[0]["state"] == "FINISHED" else None

    wait_until(row, 20, message="the named call's row in the task table")
    assert row()["name"] == "nightly report"
    with pytest.raises(TaskError, match="named step"):
        aray.get(actor.fail.options(name="named step").remote(), timeout=30)
    with pytest.raises(TypeError, match="name must be a string"):
        actor.name.options(name=3)


# --- 5. is_canceled ------------------------------------------------------------------------


@aray.remote
class Cancellable:
    def __init__(self):
        self.noticed = []

    def work(self, i, signal):
        aray.get(signal.wait.remote())  # not interrupted by the cancel, as in Ray
        if aray.get_runtime_context().is_canceled():
            self.noticed.append(i)
            return "returned early"
        return f"done {i}"

    def poll(self, i):
        while not aray.get_runtime_context().is_canceled():
            time.sleep(0.02)
        self.noticed.append(i)
        return "returned early"

    def seen(self):
        return self.noticed


def test_a_sync_actor_method_notices_its_cancel_and_returns_early():
    c = Cancellable.remote()
    polling = c.poll.remote(1)
    queued = c.poll.remote(2)
    wait_until(lambda: task_state(polling) == "RUNNING", 10, message="the call to start")
    aray.cancel(queued)
    aray.cancel(polling)
    for ref in (polling, queued):  # reported cancelled, whatever the method returned
        with pytest.raises(TaskCancelledError):
            aray.get(ref, timeout=20)
    assert aray.get(c.seen.remote(), timeout=10) == [1]  # the queued call never ran


def test_a_threaded_actor_call_notices_only_its_own_cancel():
    signal = Signal.remote()
    c = Cancellable.options(max_concurrency=3).remote()
    refs = [c.work.remote(i, signal) for i in range(3)]
    wait_until(lambda: aray.get(signal.waiting.remote()) == 3, 10,
               message="the three calls to wait")
    aray.cancel(refs[1], recursive=False)
    aray.get(signal.send.remote())
    with pytest.raises(TaskCancelledError):
        aray.get(refs[1], timeout=20)
    assert aray.get([refs[0], refs[2]], timeout=20) == ["done 0", "done 2"]
    assert aray.get(c.seen.remote()) == [1]


def test_is_canceled_in_a_task_an_async_actor_and_the_driver():
    @aray.remote
    def task(signal):
        try:
            aray.get(signal.wait.remote())
        except TaskCancelledError:  # a task is interrupted, and marked
            return aray.get_runtime_context().is_canceled()
        return "not cancelled"

    @aray.remote
    class AsyncActor:
        async def check(self):
            return aray.get_runtime_context().is_canceled()

    signal = Signal.remote()
    ref = task.remote(signal)
    wait_until(lambda: aray.get(signal.waiting.remote()) == 1, 10, message="the task to wait")
    aray.cancel(ref, recursive=False)
    assert aray.get(ref, timeout=20) is True
    with pytest.raises(RuntimeError, match="not supported in an async actor"):
        aray.get(AsyncActor.remote().check.remote(), timeout=30)
    with pytest.raises(RuntimeError):
        aray.get_runtime_context().is_canceled()


# --- 6. a streaming generator's error, after its items -------------------------------------


def _breaking_generators():
    @aray.remote
    def task_gen(n):
        yield from range(n)
        raise ValueError(f"broke after {n}")

    @aray.remote
    async def task_agen(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i
        raise ValueError(f"broke after {n}")

    class Gens:
        def quick(self):
            return "quick"

        def gen(self, n):
            yield from range(n)
            raise ValueError(f"broke after {n}")

        async def agen(self, n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i
            raise ValueError(f"broke after {n}")

    class SyncGens:
        def quick(self):
            return "quick"

        def gen(self, n):
            yield from range(n)
            raise ValueError(f"broke after {n}")

    return task_gen, task_agen, aray.remote(Gens), aray.remote(SyncGens)


def _consume(gen) -> tuple[list, str]:
    items = []
    try:
        for ref in gen:
            items.append(aray.get(ref, timeout=30))
    except ValueError as exc:
        return items, str(exc).splitlines()[0]
    return items, "no error"


def test_a_generator_error_reaches_the_consumer_after_its_items():
    task_gen, task_agen, Gens, SyncGens = _breaking_generators()
    async_actor = Gens.remote()
    sync_actor, threaded = SyncGens.remote(), SyncGens.options(max_concurrency=3).remote()
    sources = {"task": lambda n: task_gen.remote(n), "async task": lambda n: task_agen.remote(n),
               "async actor, sync gen": lambda n: async_actor.gen.remote(n),
               "async actor, async gen": lambda n: async_actor.agen.remote(n),
               "sync actor": lambda n: sync_actor.gen.remote(n),
               "threaded actor": lambda n: threaded.gen.remote(n)}
    for what, make in sources.items():
        for n in (0, 3):
            items, error = _consume(make(n))
            assert (items, error) == (list(range(n)), f"ValueError: broke after {n}"), what

    async def consume_async():
        items = []
        try:
            async for ref in async_actor.agen.remote(2):
                items.append(await ref)
        except ValueError as exc:
            return items, str(exc).splitlines()[0]

    assert asyncio.run(consume_async()) == ([0, 1], "ValueError: broke after 2")


def test_a_generator_error_follows_its_items_behind_other_answers():
    # answers of calls that ran just before are still on their way when the stream runs:
    # the stream's end (its error) must not overtake its items
    _, _, Gens, SyncGens = _breaking_generators()
    for actor in (SyncGens.remote(), SyncGens.options(max_concurrency=2).remote(),
                  Gens.remote()):
        for _ in range(20):
            quick = [actor.quick.remote() for _ in range(10)]
            items, error = _consume(actor.gen.remote(3))
            assert (items, error) == ([0, 1, 2], "ValueError: broke after 3")
            assert aray.get(quick, timeout=30) == ["quick"] * 10
