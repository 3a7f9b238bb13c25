"""The workloads of ``benchmarks/compare.py``, written once for Ray and for aray.

Run by compare.py in a fresh interpreter, one workload per process::

    python benchmarks/_workloads.py RUNTIME WORKLOAD N NUM_CPUS ROUNDS

``RUNTIME`` is the name of the module to import, ``ray`` or ``aray``: the same code then runs
on either (aray has Ray Core's API). The process starts a local cluster with
``init(num_cpus=NUM_CPUS)``, runs WORKLOAD (one untimed warm-up round, then ROUNDS timed
rounds of N operations), calls ``shutdown()`` and prints one JSON line: the measured values,
the runtime's version, and the pids (with their start times) of every process of the
runtime it saw, so that the caller can check they are all gone.

Needs only the runtime and psutil (the Ray side runs in a virtual environment of its own).
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import json
import os
import sys
import time

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
    rss = pss = 0
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


# --- the remote functions and actors (Ray's ray_perf.py) -----------------------------------------


def define(rt):
    @rt.remote
    def small_value():
        return b"ok"

    @rt.remote
    class Actor:
        def small_value(self):
            return b"ok"

        def small_value_with_arg(self, x):
            return b"ok"

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

    return small_value, Actor, AsyncActor


def timed(fn, rounds: int) -> list[float]:
    """One untimed warm-up call of ``fn``, then ``rounds`` timed calls (seconds)."""
    fn()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def rates(ops: int, times: list[float]) -> list[float]:
    return [ops / t for t in times]


# --- workloads -----------------------------------------------------------------------------------
# Each takes (rt, n, rounds, defs) and returns {metric: [values]}.


def get_calls(rt, n, rounds, defs):
    value = rt.put(0)

    def run():
        for _ in range(n):
            rt.get(value)

    return {"get calls": rates(n, timed(run, rounds))}


def put_calls(rt, n, rounds, defs):
    def run():
        for _ in range(n):
            ref = rt.put(0)
        rt.get(ref)

    return {"put calls": rates(n, timed(run, rounds))}


def tasks_sync(rt, n, rounds, defs):
    f = defs[0]

    def run():
        for _ in range(n):
            rt.get(f.remote())

    return {"tasks sync": rates(n, timed(run, rounds))}


def tasks_async(rt, n, rounds, defs):
    f = defs[0]

    def run():
        rt.get([f.remote() for _ in range(n)])

    return {"tasks async": rates(n, timed(run, rounds))}


def tasks_and_get_batch(rt, n, rounds, defs):
    """n batches of 1,000 tasks, each submitted then fetched with one get (Ray counts one
    batch as one operation)."""
    f = defs[0]

    def run():
        for _ in range(n):
            rt.get([f.remote() for _ in range(1000)])

    return {"tasks and get batch": rates(n, timed(run, rounds))}


def wait_1k_refs(rt, n, rounds, defs):
    """n calls of wait(refs, num_returns=1000) on the refs of 1,000 finished tasks."""
    f = defs[0]
    refs = [f.remote() for _ in range(1000)]
    rt.get(refs)

    def run():
        for _ in range(n):
            ready, rest = rt.wait(refs, num_returns=len(refs))
        assert len(ready) == len(refs) and not rest

    return {"wait 1k refs": rates(n, timed(run, rounds))}


def _actor_sync(rt, a, n, rounds):
    rt.get(a.small_value.remote())

    def run():
        for _ in range(n):
            rt.get(a.small_value.remote())

    return rates(n, timed(run, rounds))


def _actor_async(rt, a, n, rounds):
    rt.get(a.small_value.remote())

    def run():
        rt.get([a.small_value.remote() for _ in range(n)])

    return rates(n, timed(run, rounds))


def _kill(rt, handles):
    for h in handles:
        rt.kill(h)


def actor_sync(rt, n, rounds, defs):
    a = defs[1].remote()
    try:
        return {"1:1 actor calls sync": _actor_sync(rt, a, n, rounds)}
    finally:
        record()
        _kill(rt, [a])


def actor_async(rt, n, rounds, defs):
    a = defs[1].remote()
    try:
        return {"1:1 actor calls async": _actor_async(rt, a, n, rounds)}
    finally:
        record()
        _kill(rt, [a])


def actor_concurrent(rt, n, rounds, defs):
    a = defs[1].options(max_concurrency=16).remote()
    try:
        return {"1:1 actor calls concurrent": _actor_async(rt, a, n, rounds)}
    finally:
        record()
        _kill(rt, [a])


def actor_1n_async(rt, n, rounds, defs, num_cpus=2):
    actors = [defs[1].remote() for _ in range(num_cpus)]
    k = len(actors)
    rt.get([a.small_value.remote() for a in actors])

    def run():
        rt.get([actors[i % k].small_value.remote() for i in range(n)])

    try:
        return {"1:n actor calls async": rates(n, timed(run, rounds))}
    finally:
        record()
        _kill(rt, actors)


def async_actor_sync(rt, n, rounds, defs):
    a = defs[2].remote()
    try:
        return {"1:1 async-actor calls sync": _actor_sync(rt, a, n, rounds)}
    finally:
        record()
        _kill(rt, [a])


def async_actor_async(rt, n, rounds, defs):
    a = defs[2].remote()
    try:
        return {"1:1 async-actor calls async": _actor_async(rt, a, n, rounds)}
    finally:
        record()
        _kill(rt, [a])


def async_actor_args_async(rt, n, rounds, defs):
    a = defs[2].remote()
    rt.get(a.small_value.remote())

    def run():
        rt.get([a.small_value_with_arg.remote(i) for i in range(n)])

    try:
        return {"1:1 async-actor calls with args async": rates(n, timed(run, rounds))}
    finally:
        record()
        _kill(rt, [a])


def actor_memory(rt, n, rounds, defs):
    """Memory of the whole process tree with n idle actors, minus the same without them.

    An actor may be given a worker process that was already running (idle) before it was
    created: that process's memory is then counted as the actor's, by leaving it out of the
    "before" sum."""
    rt.get(defs[0].remote())  # the cluster has started its first worker(s)
    time.sleep(2.0)
    before = tree_memory()
    actors = [defs[1].remote() for _ in range(n)]
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


WORKLOADS = {
    "get_calls": get_calls,
    "put_calls": put_calls,
    "tasks_sync": tasks_sync,
    "tasks_async": tasks_async,
    "tasks_and_get_batch": tasks_and_get_batch,
    "wait_1k_refs": wait_1k_refs,
    "actor_sync": actor_sync,
    "actor_async": actor_async,
    "actor_concurrent": actor_concurrent,
    "actor_1n_async": actor_1n_async,
    "async_actor_sync": async_actor_sync,
    "async_actor_async": async_actor_async,
    "async_actor_args_async": async_actor_args_async,
    "actor_memory": actor_memory,
}


def session_dir(info) -> str | None:
    try:
        return info["session_dir"]  # aray: a dict; Ray: RayContext proxies address_info
    except (KeyError, TypeError):
        try:
            return info.address_info["session_dir"]
        except (AttributeError, KeyError, TypeError):
            return None


def main() -> int:
    runtime, workload, n, num_cpus, rounds = sys.argv[1:6]
    n, num_cpus, rounds = int(n), int(num_cpus), int(rounds)
    if runtime not in ("ray", "aray"):
        raise SystemExit(f"unknown runtime {runtime!r}")
    # a hung run shows where it hangs (compare.py kills it after 120 s)
    faulthandler.dump_traceback_later(100, exit=False)
    rt = importlib.import_module(runtime)
    defs = define(rt)
    out: dict = {"runtime": runtime, "version": rt.__version__, "workload": workload}
    results: dict = {}
    try:
        if workload == "init":
            # fresh process: init() until the first task's result is back, then the memory
            # of the whole runtime after 2 s of idling
            t = time.perf_counter()
            info = rt.init(num_cpus=num_cpus)
            assert rt.get(defs[0].remote()) == b"ok"
            results["init to first result"] = [time.perf_counter() - t]
            out["session_dir"] = session_dir(info)
            record()
            time.sleep(2.0)
            mem = tree_memory()
            results["idle memory"] = [mem["rss"]]
            results["idle memory (PSS)"] = [mem["pss"]]
            results["idle processes"] = [mem["procs"]]
        else:
            info = rt.init(num_cpus=num_cpus)
            out["session_dir"] = session_dir(info)
            record()
            gc.collect()
            fn = WORKLOADS[workload]
            if workload == "actor_1n_async":
                results.update(fn(rt, n, rounds, defs, num_cpus))
            else:
                results.update(fn(rt, n, rounds, defs))
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


if __name__ == "__main__":
    sys.exit(main())
