"""The microbenchmark workloads, written once for Ray and for aray.

Used by ``aray microbenchmark`` (all workloads in one process, on aray) and by
``benchmarks/compare.py``, which runs this file as a script in a fresh interpreter per
workload, on Ray (from Ray's own virtual environment) or on aray::

    python -P aray/_perf.py RUNTIME WORKLOAD N NUM_CPUS ROUNDS

``RUNTIME`` is the name of the module to import, ``ray`` or ``aray``: the same code then runs
on either (aray has Ray Core's API). ``pool`` and ``dask`` run the task workloads
(``FLOOR_WORKLOADS``) on a plain process pool and on Dask distributed, the floor to measure
the runtimes' per-task cost against. The process starts a local cluster with
``init(num_cpus=NUM_CPUS)``, runs WORKLOAD (one untimed warm-up round, then ROUNDS timed
rounds of N operations), calls ``shutdown()`` and prints one JSON line: the measured values,
the runtime's version, and the pids (with their start times) of every process of the
runtime it saw, so that the caller can check they are all gone.

The workloads and their names are those of Ray's ``ray microbenchmark`` (its
``python/ray/_private/ray_perf.py``), plus aray's asyncio ones and a few about cost at scale.
This module imports nothing of aray: it needs only the runtime, numpy and psutil.
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import json
import os
import sys
import time
from typing import Any

import psutil

ME = psutil.Process()


# --- process tree ------------------------------------------------------------------------------


def tree() -> list[psutil.Process]:
    """This process and all its descendants: the driver and every process of the runtime it
    started (Ray: gcs_server, raylet, dashboard, monitors, workers; aray: node, forkserver,
    workers)."""
    try:
        return [ME, *ME.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [ME]


SEEN: dict[int, float] = {}  # pid -> create_time of every runtime process seen


def record() -> None:
    for p in tree()[1:]:
        try:
            SEEN[p.pid] = p.create_time()
        except psutil.NoSuchProcess:
            pass


def tree_memory() -> dict:
    """Summed RSS and PSS (MB, 10^6 bytes) and the number of processes of the tree, and each
    process's own (RSS, PSS) by pid."""
    rss = pss = 0.0
    per: dict[int, tuple[float, float]] = {}
    for p in tree():
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        mine = (info.rss / 1e6, getattr(info, "pss", info.rss) / 1e6)
        per[p.pid] = mine
        rss += mine[0]
        pss += mine[1]
    record()
    return {"rss": rss, "pss": pss, "procs": len(per), "per": per}


# --- the remote functions and actors (as in Ray's ray_perf.py) -------------------------------


class Defs:
    """The remote functions and actor classes of the workloads, made for one runtime."""

    def __init__(self, rt) -> None:
        self._define_tasks(rt)
        self._define_actors(rt)

    def _define_tasks(self, rt) -> None:
        @rt.remote
        def small_value():
            return b"ok"

        @rt.remote
        def small_value_batch(n):
            rt.get([small_value.remote() for _ in range(n)])
            return 0

        @rt.remote
        def create_object_containing_ref():
            return [rt.put(1) for _ in range(10_000)]

        @rt.remote
        def call_actors(actors, n):
            k = len(actors)
            rt.get([actors[i % k].small_value.remote() for i in range(n)])

        @rt.remote
        def do_put_small():
            for _ in range(100):
                rt.put(0)

        self.small_value = small_value
        self.small_value_batch = small_value_batch
        self.create_object_containing_ref = create_object_containing_ref
        self.call_actors = call_actors
        self.do_put_small = do_put_small

    def _define_actors(self, rt) -> None:
        small_value = self.small_value

        @rt.remote(num_cpus=0)
        class Actor:
            def small_value(self):
                return b"ok"

            def small_value_arg(self, x):
                return b"ok"

            def small_value_batch(self, n):
                rt.get([small_value.remote() for _ in range(n)])

            def pid(self):
                return os.getpid()

        @rt.remote
        class AsyncActor:
            async def small_value(self):
                return b"ok"

            async def small_value_with_arg(self, x):
                return b"ok"

            async def pid(self):
                return os.getpid()

        @rt.remote(num_cpus=0)
        class Client:
            def __init__(self, servers):
                self.servers = servers if isinstance(servers, list) else [servers]

            def small_value_batch(self, n):
                refs = []
                for s in self.servers:
                    refs.extend([s.small_value.remote() for _ in range(n)])
                rt.get(refs)

        self.Actor = Actor
        self.AsyncActor = AsyncActor
        self.Client = Client


def timed(fn, rounds: int) -> list[float]:
    """One untimed warm-up call of ``fn``, then ``rounds`` timed calls (seconds)."""
    fn()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def rates(ops: float, times: list[float]) -> list[float]:
    return [ops / t for t in times]


def _kill(rt, handles):
    for h in handles:
        rt.kill(h)


def half_the_cpus() -> int:
    """Ray's ``n_cpu`` for the multi-actor workloads: half the machine's CPUs, at least 1."""
    return max(1, (os.cpu_count() or 2) // 2)


# --- workloads -----------------------------------------------------------------------------------
# Each takes (rt, n, rounds, defs) and returns {name: [values]}; a name is Ray's where Ray has
# the workload. n is the number of operations per timed round.


def get_calls(rt, n, rounds, d):
    value = rt.put(0)

    def run():
        for _ in range(n):
            rt.get(value)

    return {"single client get calls": rates(n, timed(run, rounds))}


def put_calls(rt, n, rounds, d):
    def run():
        for _ in range(n):
            ref = rt.put(0)
        rt.get(ref)

    return {"single client put calls": rates(n, timed(run, rounds))}


def multi_put_calls(rt, n, rounds, d):
    """n puts spread over tasks of 100 puts each, 10 tasks at a time (Ray: 1,000 per op)."""
    batches = max(1, n // 1000)

    def run():
        for _ in range(batches):
            rt.get([d.do_put_small.remote() for _ in range(10)])

    return {"multi client put calls": rates(batches * 1000, timed(run, rounds))}


def put_gigabytes(rt, n, rounds, d):
    """n puts of an 800 MB array (Ray's workload), in GB/s; and, in the same process, the
    machine's copy bandwidth: np.copyto into an array whose pages are already touched."""
    import numpy as np

    arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
    dst = np.empty_like(arr)
    np.copyto(dst, arr)  # touch every page first

    def copy():
        for _ in range(n):
            np.copyto(dst, arr)

    copy_rates = rates(n * arr.nbytes / 1e9, timed(copy, rounds))
    dst = None  # its 800 MB go before the puts

    def run():
        for _ in range(n):
            rt.put(arr)

    return {"single client put gigabytes": rates(n * arr.nbytes / 1e9, timed(run, rounds)),
            "memcpy gigabytes (touched pages)": copy_rates}


def get_containing_10k_refs(rt, n, rounds, d):
    ref = d.create_object_containing_ref.remote()
    rt.get(ref)

    def run():
        for _ in range(n):
            rt.get(ref)

    return {"single client get object containing 10k refs": rates(n, timed(run, rounds))}


def tasks_sync(rt, n, rounds, d):
    def run():
        for _ in range(n):
            rt.get(d.small_value.remote())

    return {"single client tasks sync": rates(n, timed(run, rounds))}


def tasks_async(rt, n, rounds, d):
    def run():
        rt.get([d.small_value.remote() for _ in range(n)])

    return {"single client tasks async": rates(n, timed(run, rounds))}


def tasks_queued(rt, n, rounds, d):
    """Cost at scale: the tasks of tasks_async, with 1k, 10k and 100k queued at once."""
    out = {}
    for queued in (1_000, 10_000, 100_000):
        def run(queued=queued):
            rt.get([d.small_value.remote() for _ in range(queued)])

        out[f"tasks async, {queued // 1000}k queued"] = rates(queued, timed(run, 1))
    return out


def tasks_and_get_batch(rt, n, rounds, d):
    """n batches of 1,000 tasks, each submitted then fetched with one get (Ray counts one
    batch as one operation)."""
    def run():
        for _ in range(n):
            rt.get([d.small_value.remote() for _ in range(1000)])

    return {"single client tasks and get batch": rates(n, timed(run, rounds))}


def multi_tasks_async(rt, n, rounds, d):
    """4 actors, each submitting n/4 tasks and getting them (Ray: 4 x 10,000)."""
    clients = [d.Actor.remote() for _ in range(4)]
    each = max(1, n // 4)
    rt.get([c.small_value.remote() for c in clients])

    def run():
        rt.get([c.small_value_batch.remote(each) for c in clients])

    try:
        return {"multi client tasks async": rates(each * 4, timed(run, rounds))}
    finally:
        record()
        _kill(rt, clients)


def wait_1k_refs(rt, n, rounds, d):
    """n times: submit 1,000 tasks, then wait for them one at a time, with
    ``ready, not_ready = wait(not_ready)`` until none is left (Ray counts each 1,000 as one
    operation)."""
    def run():
        for _ in range(n):
            not_ready = [d.small_value.remote() for _ in range(1000)]
            while not_ready:
                _ready, not_ready = rt.wait(not_ready)

    return {"single client wait 1k refs": rates(n, timed(run, rounds))}


def _actor_calls(rt, a, n, rounds, name, pipelined):
    rt.get(a.small_value.remote())

    def run():
        if pipelined:
            rt.get([a.small_value.remote() for _ in range(n)])
        else:
            for _ in range(n):
                rt.get(a.small_value.remote())

    try:
        return {name: rates(n, timed(run, rounds))}
    finally:
        record()
        _kill(rt, [a])


def actor_sync(rt, n, rounds, d):
    return _actor_calls(rt, d.Actor.remote(), n, rounds, "1:1 actor calls sync", False)


def actor_async(rt, n, rounds, d):
    return _actor_calls(rt, d.Actor.remote(), n, rounds, "1:1 actor calls async", True)


def actor_concurrent(rt, n, rounds, d):
    a = d.Actor.options(max_concurrency=16).remote()
    return _actor_calls(rt, a, n, rounds, "1:1 actor calls concurrent", True)


def async_actor_sync(rt, n, rounds, d):
    return _actor_calls(rt, d.AsyncActor.remote(), n, rounds, "1:1 async-actor calls sync",
                        False)


def async_actor_async(rt, n, rounds, d):
    return _actor_calls(rt, d.AsyncActor.remote(), n, rounds, "1:1 async-actor calls async",
                        True)


def async_actor_args_async(rt, n, rounds, d):
    a = d.AsyncActor.remote()
    rt.get(a.small_value.remote())

    def run():
        rt.get([a.small_value_with_arg.remote(i) for i in range(n)])

    try:
        return {"1:1 async-actor calls with args async": rates(n, timed(run, rounds))}
    finally:
        record()
        _kill(rt, [a])


def _one_to_n(rt, n, rounds, d, cls, name):
    """A client actor calls n/k times each of k = half_the_cpus() actors (Ray's 1:n)."""
    servers = [cls.remote() for _ in range(half_the_cpus())]
    client = d.Client.remote(servers)
    each = max(1, n // len(servers))
    rt.get([s.small_value.remote() for s in servers])

    def run():
        rt.get(client.small_value_batch.remote(each))

    try:
        return {name: rates(each * len(servers), timed(run, rounds))}
    finally:
        record()
        _kill(rt, [client, *servers])


def actor_1n_async(rt, n, rounds, d):
    return _one_to_n(rt, n, rounds, d, d.Actor, "1:n actor calls async")


def async_actor_1n_async(rt, n, rounds, d):
    return _one_to_n(rt, n, rounds, d, d.AsyncActor, "1:n async-actor calls async")


def _n_to_n(rt, n, rounds, d, cls, name):
    """4 tasks each call k = half_the_cpus() actors n/4 times in all (Ray's n:n)."""
    servers = [cls.remote() for _ in range(half_the_cpus())]
    each = max(1, n // 4)
    rt.get([s.small_value.remote() for s in servers])

    def run():
        rt.get([d.call_actors.remote(servers, each) for _ in range(4)])

    try:
        return {name: rates(each * 4, timed(run, rounds))}
    finally:
        record()
        _kill(rt, servers)


def actor_nn_async(rt, n, rounds, d):
    return _n_to_n(rt, n, rounds, d, d.Actor, "n:n actor calls async")


def async_actor_nn_async(rt, n, rounds, d):
    return _n_to_n(rt, n, rounds, d, d.AsyncActor, "n:n async-actor calls async")


def tasks_awaited(rt, n, rounds, d):
    """In asyncio code: ``await asyncio.gather(*[f.remote() for _ in range(n)])``."""
    import asyncio

    async def main():
        await asyncio.gather(*[d.small_value.remote() for _ in range(n)])

    return {"tasks awaited (asyncio.gather)": rates(n, timed(lambda: asyncio.run(main()),
                                                              rounds))}


def actor_calls_awaited(rt, n, rounds, d):
    """In asyncio code: ``await asyncio.gather(*[a.small_value.remote() ...])``."""
    import asyncio

    a = d.Actor.remote()
    rt.get(a.small_value.remote())

    async def main():
        await asyncio.gather(*[a.small_value.remote() for _ in range(n)])

    try:
        return {"actor calls awaited (asyncio.gather)": rates(
            n, timed(lambda: asyncio.run(main()), rounds))}
    finally:
        record()
        _kill(rt, [a])


def as_completed_10k(rt, n, rounds, d):
    """aray only: ``for ref in aray.as_completed(refs)`` over 10,000 ready refs (n times)."""
    if not hasattr(rt, "as_completed"):
        return {}
    refs = [rt.put(i) for i in range(10_000)]
    rt.get(refs[-1])

    def run():
        for _ in range(n):
            for _ref in rt.as_completed(refs):
                pass

    return {"as_completed over 10k refs": rates(n * 10_000, timed(run, rounds))}


def placement_group_create_removal(rt, n, rounds, d):
    """Ray's ``placement_group_create/removal`` row: create n groups of one small bundle,
    wait for each, then remove them all (one operation: a group created and removed)."""
    util = __import__(rt.__name__ + ".util", fromlist=["placement_group"])

    def run():
        groups = [util.placement_group([{"CPU": 0.001}]) for _ in range(n)]
        for pg in groups:
            assert pg.wait(timeout_seconds=30)
        for pg in groups:
            util.remove_placement_group(pg)

    return {"placement group create/removal": rates(n, timed(run, rounds))}


def actor_memory(rt, n, rounds, d):
    """Memory of the whole process tree with n idle actors, minus the same without them.

    An actor may be given a worker process that was already running (idle) before it was
    created: that process's memory is then counted as the actor's, by leaving it out of the
    "before" sum."""
    rt.get(d.small_value.remote())  # the cluster has started its first worker(s)
    time.sleep(2.0)
    before = tree_memory()
    actors = [d.Actor.remote() for _ in range(n)]
    pids = rt.get([a.pid.remote() for a in actors])
    time.sleep(2.0)  # idle
    after = tree_memory()
    reused = [pid for pid in pids if pid in before["per"]]
    base_rss = before["rss"] - sum(before["per"][pid][0] for pid in reused)
    base_pss = before["pss"] - sum(before["per"][pid][1] for pid in reused)
    own = [after["per"][pid][0] for pid in pids if pid in after["per"]]
    _kill(rt, actors)
    return {
        "memory per idle actor": [(after["rss"] - base_rss) / n],
        "memory per idle actor (PSS)": [(after["pss"] - base_pss) / n],
        "actor process RSS": [sum(own) / max(len(own), 1)],
        "idle workers reused": [len(reused)],
        "processes added": [after["procs"] - before["procs"]],
    }


#: key -> (workload, n per timed round in ``aray microbenchmark``, the name it reports)
WORKLOADS = {
    "get_calls": (get_calls, 10_000, "single client get calls"),
    "put_calls": (put_calls, 10_000, "single client put calls"),
    "multi_put_calls": (multi_put_calls, 10_000, "multi client put calls"),
    "put_gigabytes": (put_gigabytes, 3, "single client put gigabytes"),
    "get_containing_10k_refs": (get_containing_10k_refs, 10,
                                "single client get object containing 10k refs"),
    "tasks_and_get_batch": (tasks_and_get_batch, 5, "single client tasks and get batch"),
    "wait_1k_refs": (wait_1k_refs, 5, "single client wait 1k refs"),
    "tasks_sync": (tasks_sync, 1_000, "single client tasks sync"),
    "tasks_async": (tasks_async, 5_000, "single client tasks async"),
    "multi_tasks_async": (multi_tasks_async, 10_000, "multi client tasks async"),
    "actor_sync": (actor_sync, 1_000, "1:1 actor calls sync"),
    "actor_async": (actor_async, 5_000, "1:1 actor calls async"),
    "actor_concurrent": (actor_concurrent, 5_000, "1:1 actor calls concurrent"),
    "actor_1n_async": (actor_1n_async, 5_000, "1:n actor calls async"),
    "actor_nn_async": (actor_nn_async, 5_000, "n:n actor calls async"),
    "async_actor_sync": (async_actor_sync, 1_000, "1:1 async-actor calls sync"),
    "async_actor_async": (async_actor_async, 5_000, "1:1 async-actor calls async"),
    "async_actor_args_async": (async_actor_args_async, 5_000,
                               "1:1 async-actor calls with args async"),
    "async_actor_1n_async": (async_actor_1n_async, 5_000, "1:n async-actor calls async"),
    "async_actor_nn_async": (async_actor_nn_async, 5_000, "n:n async-actor calls async"),
    "tasks_awaited": (tasks_awaited, 5_000, "tasks awaited (asyncio.gather)"),
    "actor_calls_awaited": (actor_calls_awaited, 5_000, "actor calls awaited (asyncio.gather)"),
    "as_completed_10k": (as_completed_10k, 3, "as_completed over 10k refs"),
    "tasks_queued": (tasks_queued, 1, "tasks async, 1k/10k/100k queued"),
    "placement_group_create_removal": (placement_group_create_removal, 100,
                                       "placement group create/removal"),
    "actor_memory": (actor_memory, 10, "memory per idle actor"),
}


# --- the floor: the task workloads on a plain process pool and on Dask -------------------------
# Per-task cost has a floor in Python: a process pool that pickles the call to a worker and
# the result back. compare.py runs the task workloads on these two as well, through adapters
# that give them the part of Ray's API those workloads use (remote, get, init, shutdown).

#: the workloads that run on the floor runtimes too
FLOOR_WORKLOADS = ("tasks_sync", "tasks_async", "tasks_queued")


def _floor_small_value():
    # module level: a process pool pickles functions by reference
    return b"ok"


class _Submit:
    """``fn`` as a remote function: ``.remote(*args)`` submits it and returns a future."""

    def __init__(self, submit, fn) -> None:
        self._submit, self._fn = submit, fn

    def remote(self, *args):
        return self._submit(self._fn, *args)


class PoolRuntime:
    """``concurrent.futures.ProcessPoolExecutor`` with ``num_cpus`` processes."""

    def __init__(self) -> None:
        import platform

        self.__version__ = f"Python {platform.python_version()}"
        self.pool: Any = None

    def init(self, num_cpus: int) -> dict:
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=num_cpus)
        return {}

    def remote(self, fn):
        return _Submit(lambda f, *a: self.pool.submit(f, *a), fn)

    def get(self, futures):
        if isinstance(futures, list):
            return [f.result() for f in futures]
        return futures.result()

    def shutdown(self) -> None:
        self.pool.shutdown()


class DaskRuntime:
    """Dask distributed: a ``LocalCluster`` of ``num_cpus`` worker processes of one thread."""

    def __init__(self) -> None:
        import distributed  # type: ignore[import-not-found]  # compare.py's venv has it

        self.__version__ = distributed.__version__
        self.client: Any = None
        self.cluster: Any = None

    def init(self, num_cpus: int) -> dict:
        from distributed import Client, LocalCluster  # type: ignore[import-not-found]

        self.cluster = LocalCluster(n_workers=num_cpus, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        return {}

    def remote(self, fn):
        return _Submit(lambda f, *a: self.client.submit(f, *a, pure=False), fn)

    def get(self, futures):
        return self.client.gather(futures)

    def shutdown(self) -> None:
        self.client.close()
        self.cluster.close()


class FloorDefs:
    """What the task workloads use of :class:`Defs`, for a floor runtime."""

    def __init__(self, rt) -> None:
        self.small_value = rt.remote(_floor_small_value)


FLOORS = {"pool": PoolRuntime, "dask": DaskRuntime}


def session_dir(info) -> str | None:
    try:
        return info["session_dir"]  # aray: a dict; Ray: RayContext proxies address_info
    except (KeyError, TypeError):
        try:
            return info.address_info["session_dir"]
        except (AttributeError, KeyError, TypeError):
            return None


def init_and_idle(rt, num_cpus, d) -> dict:
    """Time from init() to the first task's result, then the memory of the whole runtime
    after 2 s of idling (in a fresh process, for the numbers to mean anything)."""
    t = time.perf_counter()
    info = rt.init(num_cpus=num_cpus)
    assert rt.get(d.small_value.remote()) == b"ok"
    took = time.perf_counter() - t
    record()
    time.sleep(2.0)
    mem = tree_memory()
    return {"session_dir": session_dir(info), "init to first result": [took],
            "idle memory": [mem["rss"]], "idle memory (PSS)": [mem["pss"]],
            "idle processes": [mem["procs"]]}


def main() -> int:
    """One workload of compare.py, in this fresh process; prints one RESULT line."""
    runtime, workload, *counts = sys.argv[1:6]
    n, num_cpus, rounds = map(int, counts)
    if runtime not in ("ray", "aray", *FLOORS):
        raise SystemExit(f"unknown runtime {runtime!r}")
    if runtime in FLOORS and workload not in FLOOR_WORKLOADS:
        raise SystemExit(f"{runtime} runs only the workloads {', '.join(FLOOR_WORKLOADS)}")
    # a hung run shows where it hangs (compare.py kills it after 120 s)
    faulthandler.dump_traceback_later(100, exit=False)
    rt: Any
    d: Any
    if runtime in FLOORS:
        rt = FLOORS[runtime]()
        d = FloorDefs(rt)
    else:
        rt = importlib.import_module(runtime)
        d = Defs(rt)
    out: dict = {"runtime": runtime, "version": rt.__version__, "workload": workload}
    results: dict = {}
    try:
        if workload == "init":
            results = init_and_idle(rt, num_cpus, d)
            out["session_dir"] = results.pop("session_dir")
        else:
            info = rt.init(num_cpus=num_cpus)
            out["session_dir"] = session_dir(info)
            record()
            gc.collect()
            results.update(WORKLOADS[workload][0](rt, n, rounds, d))
    finally:
        record()
        t = time.perf_counter()
        rt.shutdown()
        out["shutdown_s"] = time.perf_counter() - t
    out["results"] = results
    out["pids"] = sorted(SEEN.items())
    sys.stdout.flush()
    print("\nRESULT " + json.dumps(out), flush=True)
    return 0


def _line(name: str, values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    if "memory" in name or "RSS" in name:
        return f"{name} {mean:.1f} MB"
    if name.startswith(("idle processes", "idle workers", "processes added")):
        return f"{name} {mean:g}"
    if name == "init to first result":
        return f"{name} {mean:.3f} s"
    return f"{name} per second {mean:.2f} +- {std:.2f}"


def microbenchmark(pattern: str = "", num_cpus: int | None = None, rounds: int = 3,
                   scale: float = 1.0, write=print) -> dict:
    """``aray microbenchmark``: every workload whose key or name contains ``pattern``, on
    one aray cluster, each printed as Ray prints its own (``NAME per second MEAN +- STD``).
    Returns {name: [values]}."""
    import aray as rt

    d = Defs(rt)
    results: dict = {}
    chosen = [(key, fn, n, label) for key, (fn, n, label) in WORKLOADS.items()
              if not pattern or pattern in key or pattern in label]
    if not chosen and pattern not in "init to first result idle memory":
        raise ValueError(f"no workload matches {pattern!r}; the workloads: "
                         + ", ".join(label for _, _, label in WORKLOADS.values()))
    first = init_and_idle(rt, num_cpus, d)
    first.pop("session_dir")
    try:
        for name, values in first.items():
            if not pattern or pattern in name:
                write(_line(name, values))
                results[name] = values
        for _key, fn, n, _label in chosen:
            gc.collect()
            for name, values in fn(rt, max(1, int(n * scale)), rounds, d).items():
                write(_line(name, values))
                results[name] = values
    finally:
        rt.shutdown()
    return results


if __name__ == "__main__":
    sys.exit(main())
