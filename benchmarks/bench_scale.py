"""Scale benchmark for aray: does the cost of one operation stay flat as the sizes grow?

Run::

    python benchmarks/bench_scale.py [--quick] [--json PATH] [--rows a,b] [--num-cpus N]

For each row (a workload), the cost per operation at growing sizes (objects held, tasks
queued, refs, actors, table entries, live regions) and the ratio largest / smallest: ``ok``
when within 1.5x, ``MISS`` otherwise. Every row runs in a fresh process (with a fresh
cluster for the rows that need one) under its own ``ARAY_SESSION_ROOT`` temporary directory.
See benchmarks/README.md for what each row times.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil
from bench_core import alive, runtime_pids, tree_memory
from compare import cpu_model  # benchmarks/ is on sys.path when this script runs

LIMIT = 1.5  # largest / smallest cost within this is "ok"
OPS = 1000  # operations timed per size (fewer when one takes long: see Budget)
W = 42  # width of the metric column

# row name -> (title, full sizes, quick sizes)
ROWS = {
    "put_inline": ("put/get/free inline, N held", [1_000, 10_000, 100_000, 1_000_000],
                   [1_000, 10_000]),
    "put_shm": ("put/get/free 200 KB (shared memory), N held", [1_000, 10_000, 100_000],
                [100, 1_000]),
    "tasks": ("tasks queued", [1_000, 10_000, 100_000, 1_000_000], [1_000, 10_000]),
    "returns": ("num_returns / get / wait / as_completed", [1_000, 10_000, 100_000],
                [1_000, 10_000]),
    "actors": ("actors (num_cpus=0)", [10, 100, 1_000], [10, 50]),
    "task_table": ("task table (head, in-process)", [1_000, 10_000, 100_000, 1_000_000],
                   [1_000, 10_000]),
    "store_accounts": ("store accounts (in-process)", [1_000, 10_000, 100_000, 1_000_000],
                       [1_000, 10_000]),
    "arena": ("arena allocator (in-process)", [1_000, 10_000, 100_000], [1_000, 10_000]),
}
# seconds a row's process may take before it is stopped (the sizes done so far are kept)
TIMEOUT = {"quick": 150, "full": 900}
TIMEOUT_FULL = {"tasks": 800}  # 1M tasks get about 10 min after the smaller sizes


# --- the child side: one row, one process ----------------------------------------------------


def emit(kind: str, **fields) -> None:
    print(f"{kind} {json.dumps(fields)}", flush=True)


def figure(metric: str, size: int, value: float, unit: str = "us/op", ops: int = 0) -> None:
    emit("FIGURE", metric=metric, size=size, value=value, unit=unit, ops=ops)


def note(text: str) -> None:
    emit("NOTE", text=text)


class Budget:
    """Time ``OPS`` operations, or fewer when they are slow: stop after ``seconds`` once at
    least ``minimum`` were done (an O(n) operation at n = 1M would take minutes)."""

    seconds = 3.0  # 1 s with --quick

    def __init__(self, seconds: float | None = None, minimum: int = 20, ops: int = OPS) -> None:
        self.seconds = Budget.seconds if seconds is None else seconds
        self.minimum, self.ops = minimum, ops

    def run(self, op, *args) -> tuple[float, int]:
        """Calls ``op(i, *args)`` for i = 0, 1, ...; returns (us per call, calls). The
        cyclic garbage collector is off meanwhile: a full collection walks every object of
        the process, so it would land, O(n), on whichever operation triggers it."""
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            deadline = start + self.seconds
            done = 0
            for i in range(self.ops):
                op(i, *args)
                done += 1
                if done >= self.minimum and time.perf_counter() > deadline:
                    break
            return (time.perf_counter() - start) / done * 1e6, done
        finally:
            gc.enable()


class Cluster:
    """``aray.init`` for one row; ``shutdown`` checks that its processes are gone."""

    def __init__(self, num_cpus: int, **options) -> None:
        import aray

        aray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, **options)
        self.pids = runtime_pids()

    def shutdown(self) -> None:
        import aray

        self.pids += runtime_pids()
        t = time.perf_counter()
        try:
            aray.shutdown()
        except BaseException as e:  # a finding of its own: the figures still stand
            emit("SHUTDOWN_ERROR", error=f"aray.shutdown() raised {type(e).__name__}: {e} "
                                         f"after {time.perf_counter() - t:.1f} s")
        left = alive(sorted(set(self.pids)))
        if left:
            emit("LEAK", pids=left)


def shm_free() -> int:
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return 0


# rows 1 and 2: put / get / free with N objects held


def row_put(sizes: list[int], num_cpus: int, nbytes: int) -> None:
    import aray

    capacity = None
    if nbytes > 1000:
        # the default capacity (30% of RAM), but never more than /dev/shm can hold
        capacity = min(int(psutil.virtual_memory().total * 0.3), int(shm_free() * 0.8))
    cluster = Cluster(num_cpus, object_store_memory=capacity)
    try:
        value = b"x" * nbytes
        held: list = []
        for n in sizes:
            if nbytes > 1000 and (n * nbytes > 0.4 * shm_free() or n * nbytes > capacity):
                emit("SKIP", size=n, reason="memory")
                continue
            while len(held) < n:
                held.append(aray.put(value))
            aray.get(held[-1])  # every put registered
            gc.collect()
            best = {"put": float("inf"), "get": float("inf"), "free": float("inf")}
            for _ in range(3):
                t_put = t_get = t_free = 0.0
                for _ in range(OPS):
                    t0 = time.perf_counter()
                    ref = aray.put(value)
                    t1 = time.perf_counter()
                    aray.get(ref)
                    t2 = time.perf_counter()
                    del ref  # aray has no aray.free: dropping the last ref frees it
                    t3 = time.perf_counter()
                    t_put += t1 - t0
                    t_get += t2 - t1
                    t_free += t3 - t2
                aray.get(aray.put(0))  # let the frees of this round reach the runtime
                best["put"] = min(best["put"], t_put)
                best["get"] = min(best["get"], t_get)
                best["free"] = min(best["free"], t_free)
            for op, t in best.items():
                figure(op, n, t / OPS * 1e6, ops=OPS)
        held.clear()
    finally:
        cluster.shutdown()


# row 3: tasks queued


class PeakRSS:
    """Samples the RSS of the driver, the node process (node agent + head) and the workers
    every 50 ms in a thread; ``peak()`` gives the highest seen since ``reset()``."""

    def __init__(self, node_pid: int) -> None:
        self.me = psutil.Process()
        self.node = psutil.Process(node_pid)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.reset()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, int]:
        workers = 0
        try:
            node = self.node.memory_info().rss
            for child in self.node.children(recursive=True):
                try:
                    workers += child.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            node = 0
        return {"driver": self.me.memory_info().rss, "node": node, "workers": workers}

    def reset(self) -> dict[str, int]:
        with self._lock:
            self._peak = self.sample()
            return dict(self._peak)

    def peak(self) -> dict[str, int]:
        with self._lock:
            return dict(self._peak)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            now = self.sample()
            with self._lock:
                for k, v in now.items():
                    self._peak[k] = max(self._peak[k], v)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def row_tasks(sizes: list[int], num_cpus: int) -> None:
    import aray

    @aray.remote
    def f():
        return 0

    cluster = Cluster(num_cpus)
    rss = PeakRSS(cluster.pids[0])
    try:
        aray.get([f.remote() for _ in range(100)])  # warm: workers started
        for n in sizes:
            gc.collect()
            base = rss.reset()
            t = time.perf_counter()
            refs = [f.remote() for _ in range(n)]
            t_submit = time.perf_counter() - t
            out = aray.get(refs)
            wall = time.perf_counter() - t
            peak = rss.peak()
            assert len(out) == n
            del refs, out
            figure("per task (submit + get)", n, wall / n * 1e6, ops=n)
            figure("submit only", n, t_submit / n * 1e6, ops=n)
            for proc in ("driver", "node", "workers"):
                emit("MEMORY", size=n, process=proc, peak=peak[proc], base=base[proc],
                     per_task=(peak[proc] - base[proc]) / n)
    finally:
        rss.stop()
        cluster.shutdown()


# row 4: num_returns, get, wait, as_completed


def row_returns(sizes: list[int], num_cpus: int) -> None:
    import aray

    @aray.remote
    def many(k):
        return list(range(k))

    cluster = Cluster(num_cpus)
    try:
        aray.get(many.options(num_returns=2).remote(2))
        for n in sizes:
            gc.collect()
            t = time.perf_counter()
            refs = many.options(num_returns=n).remote(n)
            aray.wait(refs, num_returns=n)
            wall = time.perf_counter() - t
            figure("num_returns=N task (submit+wait)", n, wall / n * 1e6, ops=n)
            t = time.perf_counter()
            values = aray.get(refs)
            figure("get of N refs", n, (time.perf_counter() - t) / n * 1e6, ops=n)
            assert values[-1] == n - 1
            del values, refs
            ready = [aray.put(i) for i in range(n)]
            aray.wait(ready, num_returns=n)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                done, rest = aray.wait(ready, num_returns=n)
                best = min(best, time.perf_counter() - t)
            assert len(done) == n and not rest
            figure("wait over N ready refs", n, best / n * 1e6, ops=n)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                count = sum(1 for _ in aray.as_completed(ready))
                best = min(best, time.perf_counter() - t)
            assert count == n
            figure("as_completed over N ready refs", n, best / n * 1e6, ops=n)
            del done, rest, ready
    finally:
        cluster.shutdown()


# row 5: actors


def row_actors(sizes: list[int], num_cpus: int) -> None:
    import aray

    @aray.remote(num_cpus=0)
    class A:
        def ping(self):
            return 0

        def pid(self):
            return os.getpid()

    cluster = Cluster(num_cpus)
    uss_per_actor = 0.0
    try:
        warm = A.remote()
        aray.get(warm.ping.remote())
        aray.kill(warm)
        for k in sizes:
            if uss_per_actor and k * uss_per_actor > psutil.virtual_memory().available * 0.5:
                emit("SKIP", size=k, reason="memory")
                continue
            gc.collect()
            time.sleep(0.5)
            rss0, uss0, count0 = tree_memory()
            t = time.perf_counter()
            actors = [A.remote() for _ in range(k)]
            pids = aray.get([a.pid.remote() for a in actors])
            t_create = time.perf_counter() - t
            figure("create (until its first call returns)", k, t_create / k * 1e6, ops=k)
            t = time.perf_counter()
            for _ in range(10):
                aray.get([a.ping.remote() for a in actors])
            figure("call (10 rounds over k)", k, (time.perf_counter() - t) / (10 * k) * 1e6,
                   ops=10 * k)
            time.sleep(0.5)  # idle
            rss1, uss1, count1 = tree_memory()
            uss_per_actor = (uss1 - uss0) / k
            emit("MEMORY", size=k, process="node tree", rss_per_actor=(rss1 - rss0) / k,
                 uss_per_actor=uss_per_actor, processes_added=count1 - count0)
            for a in actors:
                aray.kill(a)
            del actors
            left = alive(pids, 60)
            if left:
                note(f"{len(left)} of {k} killed actors still alive after 60 s")
            cluster.pids += pids
    finally:
        cluster.shutdown()


# row 6: the head's task table


def row_task_table(sizes: list[int]) -> None:
    from aray._head import state

    source = {"node_id": "ab" * 14, "worker_pid": 4242}
    for n in sizes:
        ids = [i.to_bytes(16, "big") for i in range(n)]
        now = time.time()
        batches = []  # built before the clock starts: 1000 RUNNING, then the same FINISHED
        for start in range(0, n, 1000):
            chunk = ids[start:start + 1000]
            batches.append([[tid, "RUNNING", now, {"name": "f", "job_id": "01000000"}]
                            for tid in chunk])
            batches.append([[tid, "FINISHED", now, {}] for tid in chunk])
        tail = max(2, len(batches) // 10)  # the last 10% of the batches: the cost at size n
        best_all = best_tail = float("inf")
        for _ in range(3 if n <= 100_000 else 1):
            table = state.TaskTable()
            gc.collect()
            gc.disable()
            try:
                t = time.perf_counter()
                for batch in batches[:-tail]:
                    table.apply(batch, source)
                t_tail = time.perf_counter()
                for batch in batches[-tail:]:
                    table.apply(batch, source)
                end = time.perf_counter()
            finally:
                gc.enable()
            best_all = min(best_all, (end - t) / (2 * n))
            best_tail = min(best_tail, (end - t_tail) / sum(map(len, batches[-tail:])))
        figure("per event (all N fed)", n, best_all * 1e6, ops=2 * n)
        figure("per event (last 10% fed)", n, best_tail * 1e6, ops=2 * n)
        emit("SIZE", size=n, tasks=len(table.tasks), ended=table.ended, limit=table.limit)
        assert sum(table.summary()["f"].values()) == len(table.tasks)
        us, ops = Budget(minimum=5, ops=100).run(lambda i, table=table: table.summary())
        figure("summary()", n, us, unit="us/call", ops=ops)


# row 7: the store's accounts


def row_store_accounts(sizes: list[int]) -> None:
    from aray.store.service import StoreAccounts

    size = 1000
    for n in sizes:
        # n objects held, sealed on disk (O(1) each: a seal in memory today scans them all);
        # a capacity of 10 objects, all in memory: every new seal spills one
        acc = StoreAccounts(capacity=10 * size)
        for i in range(n):
            acc.sealed(i.to_bytes(16, "big"), size, on_disk=True, owner=f"w{i % 100}")
        for i in range(10):
            assert acc.sealed((n + i).to_bytes(16, "big"), size, owner="w1") == []
        gc.collect()
        # rounds of at most n / 10 seals (so that n stays n), each undone after: best of 3
        k = min(OPS, max(100, n // 10))
        best = {"seal": float("inf"), "spill_done": float("inf")}
        for rep in range(3):
            fresh = [(10 * n + rep * k + i).to_bytes(16, "big") for i in range(k)]
            times = {"seal": 0.0, "spill_done": 0.0}

            def seal(i, acc=acc, fresh=fresh, times=times):
                t0 = time.perf_counter()
                victims = acc.sealed(fresh[i], size, owner="w1")
                t1 = time.perf_counter()
                for victim in victims:
                    acc.spill_done(victim, True)
                times["seal"] += t1 - t0
                times["spill_done"] += time.perf_counter() - t1
                assert len(victims) == 1, victims

            _, ops = Budget(ops=k).run(seal)
            for what in best:
                best[what] = min(best[what], times[what] / ops)
            refill = 0
            for oid in fresh[:ops]:
                gone = acc.deleted(oid)
                refill += gone is not None and not gone.spilled
            for i in range(refill):  # memory full again: the next seal spills one
                filler = (20 * n + rep * k + i).to_bytes(16, "big")
                assert acc.sealed(filler, size, owner="w1") == []
        figure("sealed() (spills one)", n, best["seal"] * 1e6, ops=ops)
        figure("spill_done()", n, best["spill_done"] * 1e6, ops=ops)
        us, ops = Budget().run(lambda i, acc=acc: acc.to_spill())
        figure("to_spill() (decision, nothing over)", n, us, ops=ops)
        # an owner's objects are n / 100 here: the answer's length grows with n, so the
        # figure is the cost per object returned
        owned = max(1, len(acc.owned_by("w7")))
        us, ops = Budget(minimum=5, ops=100).run(lambda i, acc=acc: acc.owned_by("w7"))
        figure("owned_by() per object returned", n, us / owned, unit="us/object", ops=ops)
        us, ops = Budget(minimum=5, ops=100).run(lambda i, acc=acc: acc.stats())
        figure("stats()", n, us, unit="us/call", ops=ops)
        # delete held objects from the middle
        mid = [(n // 2 + i).to_bytes(16, "big") for i in range(min(OPS, n // 2))]
        us, ops = Budget(ops=len(mid)).run(lambda i, acc=acc, mid=mid: acc.deleted(mid[i]))
        figure("deleted()", n, us, ops=ops)
        emit("SIZE", size=n, objects=acc.stats()["num_objects"],
             in_memory=acc.stats()["num_objects"] - acc.stats()["num_spilled"])


# row 8: the arena's free list


def row_arena(sizes: list[int]) -> None:
    from aray.store.arena import PAGE, Allocator

    rng = random.Random(16)
    for n in sizes:
        # churn: n live regions of 1..8 pages; each op frees a random one and allocates
        alloc = Allocator(16 * n * 8 * PAGE)
        live = []
        for _ in range(n):
            nbytes = rng.randint(1, 8) * PAGE
            live.append((alloc.allocate(nbytes), nbytes))
        gc.collect()

        def churn(i, alloc=alloc, live=live):
            j = rng.randrange(len(live))
            offset, nbytes = live[j]
            alloc.free(offset, nbytes)
            nbytes = rng.randint(1, 8) * PAGE
            offset = alloc.allocate(nbytes)
            assert offset is not None
            live[j] = (offset, nbytes)

        us, ops = Budget().run(churn)
        figure("churn: release + allocate (1-8 pages)", n, us / 2, ops=2 * ops)
        emit("SIZE", size=n, free_regions=alloc.free_regions, live=len(live))
        # fragmented: n one-page holes between n live one-page regions, then ask for 2 pages
        alloc = Allocator((2 * n + 2 * OPS + 2) * PAGE)
        regions = [alloc.allocate(PAGE) for _ in range(2 * n)]
        for offset in regions[::2]:
            alloc.free(offset, PAGE)

        def bigger(i, alloc=alloc):
            offset = alloc.allocate(2 * PAGE)
            assert offset is not None
            alloc.free(offset, 2 * PAGE)

        us, ops = Budget().run(bigger)
        figure("fragmented: allocate + release 2 pages", n, us / 2, ops=2 * ops)


def child(row: str, sizes: list[int], num_cpus: int) -> None:
    if row == "put_inline":
        row_put(sizes, num_cpus, 16)
    elif row == "put_shm":
        row_put(sizes, num_cpus, 200 * 1000)
    elif row == "tasks":
        row_tasks(sizes, num_cpus)
    elif row == "returns":
        row_returns(sizes, num_cpus)
    elif row == "actors":
        row_actors(sizes, num_cpus)
    elif row == "task_table":
        row_task_table(sizes)
    elif row == "store_accounts":
        row_store_accounts(sizes)
    elif row == "arena":
        row_arena(sizes)
    else:
        raise SystemExit(f"unknown row {row!r}")


# --- the parent side: a process per row, the table ---------------------------------------------


def run_row(row: str, sizes: list[int], num_cpus: int, timeout: float,
            quick: bool) -> dict:
    """Run one row in a fresh process with a session root of its own; parse what it says."""
    root = tempfile.mkdtemp(prefix="aray-scale-")
    env = dict(os.environ, ARAY_SESSION_ROOT=root)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", row, *(["--quick"] * quick),
           "--sizes", ",".join(map(str, sizes)), "--num-cpus", str(num_cpus)]
    result: dict = {"title": ROWS[row][0], "sizes": sizes, "figures": {}, "skipped": {},
                    "memory": [], "sizes_info": [], "notes": [], "leaks": [], "error": "",
                    "shutdown_error": ""}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    lines: list[str] = []
    errors: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True),
               threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child; its node stops when its lifeline (stdin) closes
        proc.wait()
        result["notes"].append(f"stopped after {timeout:.0f} s: the sizes not shown did not "
                               f"finish")
    for reader in readers:
        reader.join(10)
    err = "".join(errors)
    result["seconds"] = time.perf_counter() - t
    if proc.returncode not in (0, -9):
        err = err.strip()
        result["error"] = f"exit {proc.returncode}: " + (
            err if len(err) < 3000 else f"{err[:1500]}\n...\n{err[-1500:]}")
    for line in lines:
        kind, _, payload = line.partition(" ")
        if kind not in ("FIGURE", "SKIP", "MEMORY", "SIZE", "NOTE", "LEAK", "SHUTDOWN_ERROR"):
            continue
        data = json.loads(payload)
        if kind == "FIGURE":
            metric = result["figures"].setdefault(data["metric"], {"unit": data["unit"],
                                                                   "values": {}})
            metric["values"][str(data["size"])] = data["value"]
        elif kind == "SKIP":
            result["skipped"][str(data["size"])] = data["reason"]
        elif kind == "MEMORY":
            result["memory"].append(data)
        elif kind == "SIZE":
            result["sizes_info"].append(data)
        elif kind == "NOTE":
            result["notes"].append(data["text"])
        elif kind == "SHUTDOWN_ERROR":
            result["shutdown_error"] = data["error"]
        else:
            result["leaks"] += data["pids"]
    if result["error"] or result["shutdown_error"] or result["leaks"]:
        result["notes"].append(f"session root kept (the nodes' logs): {root}")
    else:
        time.sleep(0.5)
        shutil.rmtree(root, ignore_errors=True)
    for metric in result["figures"].values():
        values = metric["values"]
        done = sorted(values, key=int)
        if len(done) >= 2 and values[done[0]] > 0:
            metric["ratio"] = values[done[-1]] / values[done[0]]
            metric["status"] = "ok" if metric["ratio"] <= LIMIT else "MISS"
        else:
            metric["ratio"], metric["status"] = None, "n/a"
    statuses = [m["status"] for m in result["figures"].values()]
    result["status"] = ("ERROR" if result["error"] or not statuses else
                        "MISS" if "MISS" in statuses else "ok")
    return result


def fmt_size(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def print_row(row: str, result: dict) -> None:
    sizes = result["sizes"]
    print(f"{row}: {result['title']}  [{result['status']}, {result['seconds']:.1f} s]")
    head = "".join(f"{'N=' + fmt_size(n):>13}" for n in sizes)
    print(f"  {'':<{W}}{head}   ratio")
    for name, metric in result["figures"].items():
        cells = ""
        for n in sizes:
            v = metric["values"].get(str(n))
            if v is not None:
                cells += f"{v:>13,.2f}"
            elif str(n) in result["skipped"]:
                cells += f"{'skipped':>13}"
            else:
                cells += f"{'-':>13}"
        ratio = metric["ratio"]
        tail = f"{ratio:6.2f}x {metric['status']}" if ratio is not None else "     n/a"
        print(f"  {name + ' (' + metric['unit'] + ')':<{W}}{cells}   {tail}")
    for size, reason in result["skipped"].items():
        print(f"  N={fmt_size(int(size))} skipped: {reason}")
    for mem in result["memory"]:
        if "per_task" in mem and mem["size"] == max(m["size"] for m in result["memory"]):
            print(f"  peak RSS {mem['process']:<8} at N={fmt_size(mem['size'])}: "
                  f"{mem['peak'] / 1e6:,.1f} MB (+{(mem['peak'] - mem['base']) / 1e6:,.1f} MB"
                  f" = {mem['per_task']:,.0f} bytes per queued task)")
        elif "rss_per_actor" in mem:
            print(f"  memory per idle actor, k={mem['size']}: RSS "
                  f"{mem['rss_per_actor'] / 1e6:.1f} MB, USS {mem['uss_per_actor'] / 1e6:.1f} MB"
                  f" (+{mem['processes_added']} processes)")
    for info in result["sizes_info"]:
        rest = ", ".join(f"{k} {v:,}" for k, v in info.items() if k != "size")
        print(f"  N={fmt_size(info['size'])}: {rest}")
    for text in result["notes"]:
        print(f"  note: {text}")
    if result["shutdown_error"]:
        print(f"  SHUTDOWN ERROR: {result['shutdown_error']}")
    if result["leaks"]:
        print(f"  LEAK: processes alive after shutdown: {result['leaks']}")
    if result["error"]:
        print(f"  ERROR: {result['error']}")
    print(flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under ~60 s)")
    parser.add_argument("--json", metavar="PATH", help="write every figure to PATH")
    parser.add_argument("--rows", help=f"comma-separated subset of: {','.join(ROWS)}")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs offered to each row's cluster (default: os.cpu_count())")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.quick:
            Budget.seconds = 1.0
        child(args.child, [int(s) for s in args.sizes.split(",")], args.num_cpus)
        return 0
    rows = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows are {','.join(ROWS)}")
    mode = "quick" if args.quick else "full"
    machine = {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
               "python": platform.python_version(), "system": platform.platform(),
               "ram_bytes": psutil.virtual_memory().total, "shm_free_bytes": shm_free()}
    print(f"aray scale benchmark ({mode})")
    print(f"machine: {machine['cpus']} CPUs, {machine['cpu_model']}; Python "
          f"{machine['python']} ({platform.python_implementation()}), {platform.system()} "
          f"{platform.release()}; RAM {machine['ram_bytes'] / 1e9:.1f} GB, /dev/shm free "
          f"{machine['shm_free_bytes'] / 1e9:.1f} GB")
    print(f"cost per operation in microseconds; ratio = largest N / smallest N, ok within "
          f"{LIMIT}x; cluster num_cpus={args.num_cpus}", flush=True)
    print()
    t_start = time.perf_counter()
    results = {}
    for row in rows:
        title, full, quick = ROWS[row]
        timeout = TIMEOUT["quick"] if args.quick else TIMEOUT_FULL.get(row, TIMEOUT["full"])
        results[row] = run_row(row, quick if args.quick else full, args.num_cpus, timeout,
                               args.quick)
        print_row(row, results[row])
    total = time.perf_counter() - t_start
    misses = [r for r, res in results.items() if res["status"] == "MISS"]
    broken = [r for r, res in results.items()
              if res["status"] == "ERROR" or res["leaks"] or res["shutdown_error"]]
    print(f"total {total:.1f} s; MISS: {', '.join(misses) or 'none'}"
          + (f"; ERROR/LEAK/SHUTDOWN ERROR: {', '.join(broken)}" if broken else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": mode, "machine": machine, "num_cpus": args.num_cpus,
                       "limit": LIMIT, "seconds": total, "rows": results}, f, indent=1)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
