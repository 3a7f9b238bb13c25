"""Core microbenchmarks for aray (modelled on Ray's ``ray microbenchmark``).

Run::

    python benchmarks/bench_core.py [--num-cpus N] [--quick]

Prints the machine, then one line per workload: the best and the median of 3 timed
repetitions (after one untimed warm-up round), as operations per second, seconds or MB.
See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time

import psutil
from compare import cpu_model  # benchmarks/ is on sys.path when this script runs

REPS = 3
INIT_RUNS = 3
W = 38  # width of the name column

# --- helpers --------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait up to ``timeout`` for ``pids`` to exit; return those still alive (not zombies)."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while True:
        still = []
        for pid in left:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    still.append(pid)
            except psutil.NoSuchProcess:
                pass
        left = still
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def runtime_pids() -> list[int]:
    """The node process this driver started and everything under it (forkserver, workers)."""
    from aray import _global

    core = _global.core()
    node_pid = core.cluster.proc.pid
    return [node_pid, *descendants(node_pid)]


def fmt_rate(x: float) -> str:
    return f"{x:>12,.0f}"


def report_rate(name: str, n: int, times: list[float], unit: str = "ops/s",
                note: str = "") -> None:
    """Print ops/s for the best (fastest) and median repetition of ``n`` operations."""
    best, med = min(times), statistics.median(times)
    extra = f"  ({note})" if note else ""
    print(f"{name:<{W}} best {fmt_rate(n / best)} {unit}   median {fmt_rate(n / med)} {unit}"
          f"   [n={n}, {len(times)} reps, best {best * 1e3:,.1f} ms]{extra}", flush=True)


def report_seconds(name: str, times: list[float], note: str = "") -> None:
    report_value(name, times, "s", ".3f", f"{len(times)} runs", note)


def report_value(name: str, values: list[float], unit: str, spec: str, what: str,
                 note: str = "") -> None:
    """Print the min and the median of ``values`` (seconds, megabytes...)."""
    extra = f"  ({note})" if note else ""
    print(f"{name:<{W}} min  {min(values):>10{spec}} {unit:<2}       median "
          f"{statistics.median(values):>10{spec}} {unit:<2}       [{what}]{extra}", flush=True)


def timed(fn, reps: int = REPS) -> list[float]:
    """One untimed warm-up call of ``fn``, then ``reps`` timed calls."""
    fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# --- init to first result, in fresh subprocesses ----------------------------------------------

CHILD = textwrap.dedent("""
    import json, os, sys, time
    t0 = time.perf_counter()
    import aray
    t1 = time.perf_counter()

    @aray.remote
    def f():
        return 0

    t2 = time.perf_counter()
    aray.init(num_cpus={num_cpus})
    assert aray.get(f.remote()) == 0
    t3 = time.perf_counter()
    import psutil
    from aray import _global
    node = _global.core().cluster.proc.pid
    pids = [node] + [p.pid for p in psutil.Process(node).children(recursive=True)]
    t4 = time.perf_counter()
    aray.shutdown()
    t5 = time.perf_counter()
    print(json.dumps({{"import": t1 - t0, "init_to_result": t3 - t2, "shutdown": t5 - t4,
                      "pids": pids}}))
""")


def bench_init(num_cpus: int) -> list[int]:
    """Returns the pids that survived their driver (should be empty)."""
    code = CHILD.format(num_cpus=num_cpus)
    imports, inits, shutdowns, walls, leaked = [], [], [], [], []
    for _ in range(INIT_RUNS):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
        wall = time.perf_counter() - t
        if out.returncode != 0:
            raise RuntimeError(f"init subprocess failed ({out.returncode}):\n{out.stderr}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        imports.append(result["import"])
        inits.append(result["init_to_result"])
        shutdowns.append(result["shutdown"])
        walls.append(wall)
        leaked += alive(result["pids"])
    report_seconds("import aray", imports, "in a fresh interpreter")
    report_seconds("init to first result", inits, "aray.init() -> get(f.remote())")
    report_seconds("shutdown", shutdowns, "aray.shutdown(), nodes and workers gone")
    report_seconds("process start to exit", walls,
                   "python -c: interpreter + import + init + 1 task + shutdown")
    return leaked


# --- the workloads on one cluster (sync init: runtime on a private loop thread) -----------------


def bench_sync_api(n: int, n_complete: int, n_wait: int) -> None:
    import aray

    @aray.remote
    def f():
        return 0

    @aray.remote
    async def af():
        return 0

    def tasks_sync():
        for _ in range(n):
            aray.get(f.remote())

    report_rate("tasks sync", n, timed(tasks_sync), note="for: get(f.remote())")

    def tasks_async():
        aray.get([f.remote() for _ in range(n)])

    report_rate("tasks async (pipelined)", n, timed(tasks_async),
                note="get([f.remote() for ...])")

    async def gather(fn):
        return await asyncio.gather(*[fn.remote() for _ in range(n)])

    report_rate("tasks awaited", n, asyncio.run(run_timed_async(lambda: gather(f))),
                note="asyncio.run loop != runtime loop")
    report_rate("async def tasks awaited", n, asyncio.run(run_timed_async(lambda: gather(af))),
                note="asyncio.run loop != runtime loop")

    def puts():
        for _ in range(n):
            ref = aray.put(0)
        aray.get(ref)  # the last put is registered, so all of them are

    report_rate("put calls", n, timed(puts), note="aray.put(0)")

    one = aray.put(0)

    def gets():
        for _ in range(n):
            aray.get(one)

    report_rate("get calls", n, timed(gets), note="aray.get(ref) of one small ref")

    ready = [aray.put(i) for i in range(n_complete)]
    aray.wait(ready, num_returns=len(ready))

    def iterate():
        count = 0
        for _ in aray.as_completed(ready):
            count += 1
        assert count == len(ready)

    times = timed(iterate)
    report_rate(f"as_completed {n_complete // 1000}k", n_complete, times, unit="refs/s",
                note=f"sync for over {n_complete:,} ready refs; best {min(times):.3f} s/iteration")
    ready.clear()  # the refs go; iterate() still names the list

    refs = [aray.put(i) for i in range(n_wait)]
    aray.wait(refs, num_returns=len(refs))
    calls = 20

    def waits():
        for _ in range(calls):
            done, rest = aray.wait(refs, num_returns=len(refs))
        assert len(done) == n_wait and not rest

    times = timed(waits)
    report_rate(f"wait {n_wait // 1000}k refs", calls, times, unit="calls/s",
                note=f"wait(refs, num_returns={n_wait}) on ready refs; "
                     f"{n_wait * calls / min(times):,.0f} refs/s")


async def run_timed_async(make_coro) -> list[float]:
    """The async twin of :func:`timed`: one warm-up, then REPS timed awaits."""
    await make_coro()
    out = []
    for _ in range(REPS):
        t = time.perf_counter()
        await make_coro()
        out.append(time.perf_counter() - t)
    return out


# --- actors (on the same cluster) -------------------------------------------------------------

N_CREATE = 20  # actors per repetition of "actor creation" / "memory per idle actor"


def actor_classes():
    """The actors of Ray's ``ray_perf.py``, as ``compare.py`` runs them (``aray/_perf.py``)."""
    import aray
    from aray._perf import Defs

    defs = Defs(aray)
    return defs.Actor, defs.AsyncActor


def kill_actors(handles: list) -> None:
    import aray

    for h in handles:
        aray.kill(h)


def bench_actors(n: int, num_cpus: int) -> list[int]:
    """The actor call workloads; returns the pids of the actors' workers (for the leak check)."""
    import aray

    Actor, AsyncActor = actor_classes()
    a = Actor.remote()
    c = Actor.options(max_concurrency=16).remote()
    aa = AsyncActor.remote()
    many = [Actor.remote() for _ in range(num_cpus)]
    amany = [AsyncActor.remote() for _ in range(num_cpus)]
    everyone = [a, c, aa, *many, *amany]
    # every actor is up (and its address known to this driver) before anything is timed
    aray.get([h.small_value.remote() for h in everyone])
    pids = aray.get([h.pid.remote() for h in everyone])

    def sync_calls(actor):
        def run():
            for _ in range(n):
                aray.get(actor.small_value.remote())
        return run

    def async_calls(actor):
        def run():
            aray.get([actor.small_value.remote() for _ in range(n)])
        return run

    def round_robin(actors):
        def run():
            k = len(actors)
            aray.get([actors[i % k].small_value.remote() for i in range(n)])
        return run

    try:
        report_rate("1:1 actor calls sync", n, timed(sync_calls(a)),
                    note="for: get(a.small_value.remote())")
        report_rate("1:1 actor calls async", n, timed(async_calls(a)),
                    note="get([a.small_value.remote() for ...])")
        report_rate("1:1 actor calls concurrent", n, timed(async_calls(c)),
                    note="the same, max_concurrency=16 (threads)")
        report_rate("1:n actor calls async", n, timed(round_robin(many)),
                    note=f"round-robin over {len(many)} actors, one get")

        async def gather():
            return await asyncio.gather(*[a.small_value.remote() for _ in range(n)])

        report_rate("actor calls awaited", n, asyncio.run(run_timed_async(gather)),
                    note="gather(a.small_value.remote() ...), asyncio.run loop")
        report_rate("1:1 async-actor calls sync", n, timed(sync_calls(aa)),
                    note="for: get(aa.small_value.remote()), async def")
        report_rate("1:1 async-actor calls async", n, timed(async_calls(aa)),
                    note="get([aa.small_value.remote() for ...]), async def")

        def with_args():
            aray.get([aa.small_value_with_arg.remote(i) for i in range(n)])

        report_rate("1:1 async-actor calls with args async", n, timed(with_args),
                    note="get([aa.small_value_with_arg.remote(i) ...])")
        report_rate("1:n async-actor calls async", n, timed(round_robin(amany)),
                    note=f"round-robin over {len(amany)} async actors, one get")
    finally:
        kill_actors(everyone)
    alive(pids)  # wait (up to 10 s) for their workers to exit before the next workload
    return pids


def tree_memory() -> tuple[int, int, int]:
    """(summed RSS, summed USS, number of processes) of the node process and its descendants."""
    rss = uss = count = 0
    for pid in runtime_pids():
        try:
            info = psutil.Process(pid).memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        uss += info.uss
        count += 1
    return rss, uss, count


def bench_actor_creation() -> list[int]:
    """Create N_CREATE actors and get one call back from each; measure the node's memory with
    them idle; kill them and wait for their workers to exit. Returns all their pids."""
    import aray

    Actor, _ = actor_classes()
    times, rss_mb, uss_mb, procs, all_pids = [], [], [], [], []
    for rep in range(REPS + 1):  # the first round is the warm-up
        rss0, uss0, count0 = tree_memory()
        t = time.perf_counter()
        handles = [Actor.remote() for _ in range(N_CREATE)]
        pids = aray.get([h.pid.remote() for h in handles])
        elapsed = time.perf_counter() - t
        time.sleep(0.2)  # idle
        rss1, uss1, count1 = tree_memory()
        kill_actors(handles)
        all_pids += pids
        if alive(pids):
            raise RuntimeError(f"killed actors still alive after 10 s: {alive(pids, 0)}")
        if rep:
            times.append(elapsed)
            rss_mb.append((rss1 - rss0) / N_CREATE / 1e6)
            uss_mb.append((uss1 - uss0) / N_CREATE / 1e6)
            procs.append(count1 - count0)
    report_rate("actor creation", N_CREATE, times, unit="actors/s",
                note=f"{N_CREATE} x Actor.remote(), then get one call from each")
    med = statistics.median
    report_value("memory per idle actor", rss_mb, "MB", ".1f", f"{N_CREATE} actors, {REPS} runs",
                 f"summed RSS of the node's process tree, (after - before) / {N_CREATE}; "
                 f"USS {med(uss_mb):.1f} MB/actor; +{med(procs):.0f} processes")
    return all_pids


# --- awaited tasks with aray bound to the application's loop (aray.aio.init) --------------------


async def bench_native_loop(n: int, num_cpus: int) -> list[int]:
    import aray

    await aray.aio.init(num_cpus=num_cpus)
    pids = runtime_pids()
    try:
        @aray.remote
        def f():
            return 0

        @aray.remote
        async def af():
            return 0

        async def gather(fn):
            return await asyncio.gather(*[fn.remote() for _ in range(n)])

        report_rate("tasks awaited (aio.init)", n, await run_timed_async(lambda: gather(f)),
                    note="runtime on the asyncio.run loop")
        report_rate("async def tasks awaited (aio.init)", n,
                    await run_timed_async(lambda: gather(af)),
                    note="runtime on the asyncio.run loop")

        Actor, _ = actor_classes()
        a = Actor.remote()
        await a.small_value.remote()

        async def gather_actor():
            return await asyncio.gather(*[a.small_value.remote() for _ in range(n)])

        report_rate("actor calls awaited (aio.init)", n, await run_timed_async(gather_actor),
                    note="runtime on the asyncio.run loop")
    finally:
        pids = sorted(set(pids) | set(runtime_pids()))  # the actor's worker too
        await aray.aio.shutdown()
    return pids


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs offered to the local cluster (default: os.cpu_count())")
    parser.add_argument("--quick", action="store_true",
                        help="n=1000 instead of 5000 (about 15 s instead of about 50 s on 2 cores)")
    args = parser.parse_args()
    n = 1000 if args.quick else 5000
    n_complete, n_wait = 10_000, 1_000

    print(f"aray core benchmark{' (quick)' if args.quick else ''}")
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()} "
          f"({platform.python_implementation()}), {platform.system()} {platform.release()}")
    t_start = time.perf_counter()
    import aray

    print(f"aray {aray.__version__}; cluster num_cpus={args.num_cpus}; n={n}; "
          f"best/median of {REPS} reps after 1 warm-up round", flush=True)
    print()

    leaked = bench_init(args.num_cpus)

    aray.init(num_cpus=args.num_cpus)
    pids = runtime_pids()
    try:
        bench_sync_api(n, n_complete, n_wait)
        pids += bench_actors(n, args.num_cpus)
        pids += bench_actor_creation()
    finally:
        pids += runtime_pids()  # workers started since init
        aray.shutdown()
    leaked += alive(pids)

    leaked += alive(asyncio.run(bench_native_loop(n, args.num_cpus)))

    print()
    total = time.perf_counter() - t_start
    if leaked:
        print(f"LEAK: processes still alive after aray.shutdown(): {sorted(set(leaked))}")
        return 1
    print(f"no aray process left behind; total {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
