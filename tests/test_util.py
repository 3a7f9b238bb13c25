"""Ray's utilities under Ray's names, on a real local cluster: ActorPool,
aray.util.as_completed and aray.util.map_unordered; and get_runtime_context() in a driver,
tasks and actors (sync and async)."""

import asyncio
import os
import time

import pytest
from conftest import wait_until

import aray
from aray.exceptions import ActorDiedError, TaskError
from aray.util import ActorPool, as_completed, map_unordered

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.timeout(120)]


@aray.remote
class Worker:
    def double(self, x):
        return 2 * x

    def wait_for(self, path, value):
        while not os.path.exists(path):  # blocks until the test creates the file
            time.sleep(0.01)
        return value

    @aray.method(num_returns=2)
    def pair(self, x):
        return x, x + 1

    def crash(self):
        os._exit(1)


@aray.remote
class Log:
    def __init__(self):
        self.seen = []

    def add(self, x):
        self.seen.append(x)

    def read(self):
        return self.seen


@aray.remote
class Recorder:
    def run(self, log, x):
        aray.get(log.add.remote(x))
        return x


def double(actor, value):
    return actor.double.remote(value)


# --- ActorPool ---------------------------------------------------------------------------


def test_map_submits_before_iterating():
    log = Log.remote()
    pool = ActorPool([Recorder.remote(), Recorder.remote()])
    results = pool.map(lambda a, v: a.run.remote(log, v), [1, 2, 3])
    # nothing iterated yet: the first two calls run (one per actor), the third waits
    wait_until(lambda: sorted(aray.get(log.read.remote())) == [1, 2], timeout=30,
               message="map() to submit before the iteration starts")
    assert pool.has_free() is False and len(pool._pending_submits) == 1
    assert list(results) == [1, 2, 3]
    unordered = pool.map_unordered(lambda a, v: a.run.remote(log, v), [4, 5])
    wait_until(lambda: sorted(aray.get(log.read.remote())) == [1, 2, 3, 4, 5], timeout=30,
               message="map_unordered() to submit before the iteration starts")
    assert sorted(unordered) == [4, 5]


def test_get_next_timeout_raises_and_ignore_drops_the_call(tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Worker.remote()])
    pool.submit(lambda a, v: a.wait_for.remote(gate, v), "slow")
    with pytest.raises(TimeoutError, match="^Timed out waiting for result$"):
        pool.get_next(timeout=0.1)
    assert pool.has_next()  # still the next result
    with pytest.raises(TimeoutError, match="^Timed out waiting for result$"):
        pool.get_next_unordered(timeout=0.1)
    with pytest.raises(TimeoutError, match="Timed out waiting for result. The task .* has "
                                           "been ignored"):
        pool.get_next(timeout=0.1, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()  # dropped: its actor takes new work
    pool.submit(lambda a, v: a.wait_for.remote(gate, v), "next")
    open(gate, "w").close()
    assert pool.get_next(timeout=30) == "next"  # not the dropped call's result
    with pytest.raises(StopIteration, match="No more results to get"):
        pool.get_next()


def test_get_next_unordered_ignore_drops_the_oldest_call(tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Worker.remote(), Worker.remote()])
    pool.submit(lambda a, v: a.wait_for.remote(gate, v), "first")
    pool.submit(lambda a, v: a.wait_for.remote(gate, v), "second")
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next_unordered(timeout=0.1, ignore_if_timedout=True)
    open(gate, "w").close()
    assert pool.get_next_unordered(timeout=30) == "second"
    assert not pool.has_next()


def test_get_next_unordered_returns_what_is_ready_first(tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool([Worker.remote(), Worker.remote()])
    pool.submit(lambda a, v: a.wait_for.remote(gate, v), "blocked")
    pool.submit(double, 21)
    assert pool.get_next_unordered(timeout=30) == 42
    open(gate, "w").close()
    assert pool.get_next(timeout=30) == "blocked"


def test_a_method_with_several_returns_gives_a_list():
    pool = ActorPool([Worker.remote(), Worker.remote()])
    for i in range(4):
        pool.submit(lambda a, v: a.pair.remote(v), i)
    assert [pool.get_next(timeout=30) for _ in range(2)] == [[0, 1], [1, 2]]
    assert sorted(pool.get_next_unordered(timeout=30) for _ in range(2)) == [[2, 3], [3, 4]]
    assert list(pool.map(lambda a, v: a.pair.remote(v), [5, 6])) == [[5, 6], [6, 7]]


def test_map_drops_earlier_results_that_are_not_ready():
    @aray.remote
    class Echo:
        async def echo(self, x, delay=0):
            await asyncio.sleep(delay)
            return x

    actors = [Echo.remote(), Echo.remote()]
    pool = ActorPool(actors)
    pool.submit(lambda a, v: a.echo.remote(v, 60), "stale")
    start = time.monotonic()
    assert list(pool.map(lambda a, v: a.echo.remote(v), [1, 2, 3])) == [1, 2, 3]
    pool.submit(lambda a, v: a.echo.remote(v, 60), "stale")
    assert sorted(pool.map_unordered(lambda a, v: a.echo.remote(v), [4, 5])) == [4, 5]
    assert time.monotonic() - start < 30
    for actor in actors:
        aray.kill(actor)


def test_a_dead_actor_leaves_the_pool():
    survivor, doomed = Worker.remote(), Worker.remote()
    pool = ActorPool([survivor, doomed])  # submit takes the last idle actor first
    pool.submit(lambda a, v: a.crash.remote(), None)
    with pytest.raises(ActorDiedError):
        pool.get_next(timeout=60)
    assert pool._idle_actors == [survivor]
    assert list(pool.map(double, range(4))) == [0, 2, 4, 6]


def test_a_failed_call_gives_its_actor_back():
    @aray.remote
    class Picky:
        def f(self, x):
            if x == 1:
                raise ValueError("no 1")
            return x

    pool = ActorPool([Picky.remote()])
    pool.submit(lambda a, v: a.f.remote(v), 1)
    with pytest.raises(ValueError, match="no 1"):
        pool.get_next()
    assert pool.has_free() and list(pool.map(lambda a, v: a.f.remote(v), [2, 3])) == [2, 3]


def test_push_pop_idle_and_has_free():
    a1, a2, a3 = Worker.remote(), Worker.remote(), Worker.remote()
    pool = ActorPool([a1])
    pool.submit(double, 1)
    assert pool.has_free() is False and pool.pop_idle() is None
    with pytest.raises(ValueError, match="Actor already belongs to current ActorPool"):
        pool.push(a1)
    pool.push(a2)
    assert pool.has_free()
    pool.submit(double, 2)
    pool.submit(double, 3)
    assert pool.has_free() is False and len(pool._pending_submits) == 1
    pool.push(a3)  # takes the waiting value at once
    assert len(pool._pending_submits) == 0 and pool.has_free() is False
    assert sorted(pool.get_next(timeout=30) for _ in range(3)) == [2, 4, 6]
    assert pool.has_free() and pool.pop_idle() in (a1, a2, a3)


def test_the_function_must_return_refs():
    pool = ActorPool([Worker.remote()])
    with pytest.raises(TypeError, match="must return the ObjectRef of an actor call"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free() and not pool.has_next()  # the actor is still free
    assert list(pool.map(double, [1])) == [2]


@pytest.mark.anyio
async def test_amap_submits_at_once_and_drops_earlier_results():
    pool = ActorPool([Worker.remote(), Worker.remote()])
    pool.submit(double, 100)
    ordered = pool.amap(double, range(4))
    assert not pool.has_free()  # submitted before the first await
    assert [x async for x in ordered] == [0, 2, 4, 6]
    assert sorted([x async for x in pool.amap_unordered(double, range(3))]) == [0, 2, 4]


def test_ray_attribute_names_show_the_calls_in_flight(tmp_path):
    # the bookkeeping lives in an InFlight; code written for Ray's pool still reads it here
    gate = str(tmp_path / "gate")
    worker = Worker.remote()
    pool = ActorPool([worker])
    pool.submit(lambda a, v: a.wait_for.remote(gate, v), 1)
    ((key, (index, actor)),) = pool._future_to_actor.items()
    assert (index, actor) == (0, worker) and pool._index_to_future == {0: key}
    assert (pool._next_task_index, pool._next_return_index) == (1, 0)
    open(gate, "w").close()
    assert pool.get_next() == 1
    assert pool._future_to_actor == {} and pool._index_to_future == {}
    assert (pool._next_task_index, pool._next_return_index) == (1, 0)
    assert pool._idle_actors == [worker]


# --- as_completed and map_unordered ------------------------------------------------------


@aray.remote
def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return seconds if value is None else value


@aray.remote
def fails():
    raise KeyError("boom")


def test_util_as_completed_yields_values_in_batches():
    refs = [sleep_then.remote(s) for s in (1.0, 0.0, 0.5)]
    # the two first ready (0.0, then 0.5) make a batch, in the order of the refs
    assert list(as_completed(refs, chunk_size=2)) == [0.0, 0.5, 1.0]
    refs = [sleep_then.remote(s) for s in (1.0, 0.0, 0.5)]
    assert list(as_completed(refs, chunk_size=1)) == [0.0, 0.5, 1.0]
    refs = [sleep_then.remote(0, i) for i in range(25)]
    yielded = list(as_completed(refs, yield_obj_refs=True))
    assert sorted(yielded, key=refs.index) == refs
    assert list(as_completed([])) == []


def test_util_as_completed_timeout_bounds_each_batch_not_the_whole():
    refs = [sleep_then.remote(0.6), sleep_then.remote(0.0)]
    # each wait for a batch of 10 gives up after 0.1 s, and the next one waits again
    assert sorted(as_completed(refs, timeout=0.1, fetch_local=True)) == [0.0, 0.6]


def test_util_as_completed_raises_a_failed_task_error():
    with pytest.raises(KeyError, match="boom"):
        list(as_completed([fails.remote()]))
    with pytest.raises(TaskError):
        list(as_completed([fails.remote()]))


def test_util_as_completed_refuses_bad_arguments():
    ref = aray.put(1)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        as_completed([ref], chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size, not num_returns"):
        as_completed([ref], num_returns=1)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        as_completed([ref], timeot=1)
    with pytest.raises(ValueError, match="each ref once"):
        as_completed([ref, ref])
    with pytest.raises(TypeError, match="expects ObjectRefs"):
        as_completed([1])
    assert list(aray.as_completed([ref])) == [ref]  # aray's own as_completed yields refs


def test_map_unordered_runs_a_remote_function_with_backpressure():
    @aray.remote
    def square(x):
        return x * x

    assert sorted(map_unordered(square, range(30))) == [i * i for i in range(30)]
    pulled = []

    def items():
        for i in range(6):
            pulled.append(i)
            yield i

    results = map_unordered(square, items(), backpressure_size=2, chunk_size=1)
    assert pulled == []  # items are submitted as the iteration goes
    first = next(results)
    assert pulled == [0, 1] and first in (0, 1)  # two in flight, then a wait for one
    assert sorted([first, *results]) == [0, 1, 4, 9, 16, 25]
    refs = list(map_unordered(square, [3], yield_obj_refs=True, backpressure_size=None))
    assert aray.get(refs) == [9]


def test_map_unordered_refuses_bad_arguments():
    with pytest.raises(TypeError, match="decorate .* with @aray.remote"):
        map_unordered(lambda x: x, [1])
    with pytest.raises(ValueError, match="backpressure_size must be positive"):
        map_unordered(sleep_then, [1], backpressure_size=0)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        map_unordered(sleep_then, [1], chunk_size=0)


# --- get_runtime_context -----------------------------------------------------------------


def test_runtime_context_in_the_driver():
    ctx = aray.get_runtime_context()
    assert ctx.get_task_id() is None and ctx.get_actor_id() is None
    assert ctx.get_actor_name() is None and ctx.get_task_name() is None
    assert isinstance(ctx.namespace, str) and ctx.namespace
    assert ctx.get() == {"job_id": ctx.get_job_id(), "node_id": ctx.get_node_id(),
                         "namespace": ctx.namespace}
    assert ctx.get_accelerator_ids() == {"GPU": []}
    assert ctx.get_placement_group_id() is None
    with pytest.raises(AssertionError, match="only available in a task or an actor"):
        ctx.get_assigned_resources()
    with pytest.raises(RuntimeError, match="only available in an actor"):
        ctx.current_actor  # noqa: B018
    with pytest.raises(AssertionError, match="only available inside an actor"):
        ctx.was_current_actor_reconstructed  # noqa: B018
    with pytest.raises(RuntimeError, match="only available in a task or an actor call"):
        ctx.is_canceled()


def test_runtime_context_in_a_task():
    @aray.remote
    def where():
        ctx = aray.get_runtime_context()
        return (ctx.get_task_id(), ctx.get_task_name(), ctx.get_actor_id(),
                ctx.get_actor_name(), ctx.get_accelerator_ids(), ctx.is_canceled())

    task_id, name, actor_id, actor_name, accelerators, canceled = aray.get(where.remote())
    assert len(task_id) == 24 and name.endswith("where")  # the name the state API shows
    assert actor_id is None and actor_name is None and accelerators == {"GPU": []}
    assert canceled is False

    @aray.remote
    def outside_an_actor():
        try:
            _ = aray.get_runtime_context().current_actor
        except RuntimeError as exc:
            return str(exc)

    assert "only available in an actor" in aray.get(outside_an_actor.remote())


@aray.remote
class Inside:
    def __init__(self):
        ctx = aray.get_runtime_context()
        self.at_init = (ctx.get_actor_id(), ctx.get_task_id())

    def init_ids(self):
        return self.at_init

    def facts(self):
        ctx = aray.get_runtime_context()
        return (ctx.get_actor_id(), ctx.get_task_id(), ctx.get_task_name(),
                ctx.get_assigned_resources(), ctx.get_accelerator_ids())


@aray.remote
class AsyncInside:
    async def facts(self):
        ctx = aray.get_runtime_context()
        return (ctx.get_actor_id(), ctx.get_task_id(), ctx.get_task_name(),
                ctx.get_assigned_resources(), ctx.get_accelerator_ids())


@pytest.mark.parametrize("cls", [Inside, AsyncInside], ids=["sync", "async"])
def test_runtime_context_in_an_actor(cls):
    actor = cls.remote()
    actor_id, task_id, name, resources, accelerators = aray.get(actor.facts.remote())
    assert actor_id == actor.actor_id and len(task_id) == 24
    assert name == f"{cls.__name__}.facts"
    assert resources == {} and accelerators == {"GPU": []}  # an actor holds no CPU by default
    held = cls.options(num_cpus=1, resources={"Custom": 2}).remote()
    assert aray.get(held.facts.remote())[3] == {"CPU": 1.0, "Custom": 2.0}


def test_runtime_context_in_an_actor_constructor():
    actor = Inside.remote()
    actor_id, task_id = aray.get(actor.init_ids.remote())
    assert actor_id == actor.actor_id and task_id.startswith(actor.actor_id)


def test_actor_name_namespace_and_handle_inside_an_actor():
    @aray.remote
    class Me:
        def facts(self):
            ctx = aray.get_runtime_context()
            return ctx.get_actor_name(), ctx.namespace, ctx.current_actor, ctx.get()

        def call_myself(self):
            return aray.get(aray.get_runtime_context().current_actor.echo.remote(7))

        def echo(self, x):
            return x

    named = Me.options(name="util-me", max_concurrency=2).remote()
    name, namespace, handle, as_dict = aray.get(named.facts.remote())
    assert name == "util-me" and handle == named
    assert namespace == aray.get_runtime_context().namespace
    assert as_dict["actor_id"] == named.actor_id and as_dict["namespace"] == namespace
    assert aray.get(named.call_myself.remote()) == 7
    assert aray.get(Me.remote().facts.remote())[0] == ""  # an actor without a name


def test_was_current_actor_reconstructed():
    @aray.remote(max_restarts=1)
    class Phoenix:
        def __init__(self):
            self.at_init = aray.get_runtime_context().was_current_actor_reconstructed

        def state(self):
            return self.at_init, aray.get_runtime_context().was_current_actor_reconstructed

        def crash(self):
            os._exit(1)

    actor = Phoenix.remote()
    assert aray.get(actor.state.remote()) == (False, False)
    actor.crash.remote()
    assert wait_until(lambda: _try(lambda: aray.get(actor.state.remote(), timeout=5)),
                      timeout=60, message="the actor to come back") == (True, True)


def test_assigned_resources_and_namespace_in_a_task():
    @aray.remote
    def held():
        ctx = aray.get_runtime_context()
        return ctx.get_assigned_resources(), ctx.namespace, ctx.get()["task_id"]

    resources, namespace, task_id = aray.get(held.remote())
    assert (resources, namespace) == ({"CPU": 1.0}, aray.get_runtime_context().namespace)
    assert len(task_id) == 24
    resources = aray.get(held.options(num_cpus=0.5, resources={"Custom": 1}).remote())[0]
    assert resources == {"CPU": 0.5, "Custom": 1.0}


def _try(fn):
    try:
        return fn()
    except aray.exceptions.ArayError:
        return None


def test_namespace_of_the_driver_is_the_one_asked_for(run_script):
    r = run_script("""
        aray.init(num_cpus=1, namespace="util-ns")
        ctx = aray.get_runtime_context()
        print("NS", ctx.namespace, ctx.get()["namespace"])
        aray.shutdown()
    """)
    assert "NS util-ns util-ns" in r.stdout


DOCTESTS = """
import doctest, importlib, sys
import aray
failed = 0
finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
for name in sys.argv[1:]:
    for test in finder.find(importlib.import_module(name)):
        if test.examples:
            failed += runner.run(test).failed
            aray.shutdown()  # each example starts from a clean slate
print("ATTEMPTED", runner.tries, "FAILED", failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.timeout(300)
def test_docstring_examples_of_the_util_modules_run():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", DOCTESTS, "aray.util", "aray.util._actor_pool",
                           "aray.util._in_flight"],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert int(proc.stdout.split("ATTEMPTED ")[1].split()[0]) > 30
