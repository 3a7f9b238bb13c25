"""Ray and aray side by side on this machine, in one run.

Run::

    python benchmarks/compare.py [--quick] [--ray-venv PATH] [--write-docs]

Ray runs from a virtual environment of its own (created on first use with
``python -m venv PATH`` and ``pip install ray numpy psutil dask[distributed]``; default
/tmp/aray-ray-venv), so it never becomes a dependency of aray; aray runs with the interpreter
that runs this script. The task rows also run on a plain process pool and on Dask (from the
same venv), the floor for per-task cost, in a second table.
Every workload of aray/_perf.py runs in a fresh process per side and repetition
(Ray, aray, aray, Ray, Ray, aray...), with the same ``num_cpus`` on both sides. The script
prints the machine and one table (best and median per side, and the ratio, > 1 when aray is
better), checks that no process of either runtime is left behind, and with --write-docs
writes the table into docs/benchmarks.md. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKLOADS = ROOT / "aray" / "_perf.py"  # standalone: it runs on Ray's interpreter too
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
MKDOCS = ROOT / "mkdocs.yml"
DEFAULT_VENV = "/tmp/aray-ray-venv"
RAY_PACKAGES = ["ray", "numpy", "psutil", "dask[distributed]"]  # Dask runs from there too
CHILD_TIMEOUT = 120.0  # seconds per workload process (the slowest takes about 15 s)
ROUNDS = 2  # timed rounds per process, after one untimed warm-up round


@dataclass
class Workload:
    key: str  # the key in aray/_perf.py
    n: int  # operations per timed round (full run)
    n_quick: int
    what: str  # how n is counted, for the docs


@dataclass
class Row:
    metric: str  # key in the child's results
    label: str  # the table's name (Ray's name where there is one)
    unit: str
    higher_is_better: bool
    workload: str
    digits: int = 0  # decimals shown
    compared: bool = True  # False: a property of the machine, measured on both sides


WORKLOADS_LIST = [
    Workload("init", 1, 1, "one init per process"),
    Workload("get_calls", 10_000, 5_000, "gets per round"),
    Workload("put_calls", 10_000, 5_000, "puts per round"),
    Workload("multi_put_calls", 10_000, 5_000, "puts per round"),
    Workload("put_gigabytes", 3, 2, "puts of 800 MB per round"),
    Workload("get_containing_10k_refs", 10, 5, "gets per round"),
    Workload("tasks_sync", 1_000, 500, "tasks per round"),
    Workload("tasks_async", 5_000, 2_000, "tasks per round"),
    Workload("tasks_and_get_batch", 5, 3, "batches of 1,000 tasks per round"),
    Workload("multi_tasks_async", 10_000, 4_000, "tasks per round"),
    Workload("wait_1k_refs", 3, 2, "batches of 1,000 tasks per round"),
    Workload("actor_sync", 1_000, 500, "calls per round"),
    Workload("actor_async", 5_000, 2_000, "calls per round"),
    Workload("actor_concurrent", 5_000, 2_000, "calls per round"),
    Workload("actor_1n_async", 5_000, 2_000, "calls per round"),
    Workload("actor_nn_async", 5_000, 2_000, "calls per round"),
    Workload("async_actor_sync", 1_000, 500, "calls per round"),
    Workload("async_actor_async", 5_000, 2_000, "calls per round"),
    Workload("async_actor_args_async", 5_000, 2_000, "calls per round"),
    Workload("async_actor_1n_async", 5_000, 2_000, "calls per round"),
    Workload("async_actor_nn_async", 5_000, 2_000, "calls per round"),
    Workload("tasks_awaited", 5_000, 2_000, "tasks per round"),
    Workload("actor_calls_awaited", 5_000, 2_000, "calls per round"),
    Workload("tasks_queued", 1, 1, "1k, 10k and 100k tasks, one round each"),
    Workload("placement_group_create_removal", 100, 50, "groups per round"),
    Workload("actor_memory", 10, 10, "actors"),
]
BY_KEY = {w.key: w for w in WORKLOADS_LIST}


def _rate(name: str, unit: str, workload: str, digits: int = 0) -> Row:
    return Row(name, name, unit, True, workload, digits)


ROWS = [
    Row("init to first result", "init to first result", "s", False, "init", 2),
    Row("idle memory", "idle memory (RSS)", "MB", False, "init"),
    Row("idle memory (PSS)", "idle memory (PSS)", "MB", False, "init"),
    _rate("single client get calls", "gets/s", "get_calls"),
    _rate("single client put calls", "puts/s", "put_calls"),
    _rate("multi client put calls", "puts/s", "multi_put_calls"),
    _rate("single client put gigabytes", "GB/s", "put_gigabytes", 1),
    Row("memcpy gigabytes (touched pages)", "memcpy gigabytes (touched pages)", "GB/s", True,
        "put_gigabytes", 1, compared=False),
    _rate("single client get object containing 10k refs", "gets/s", "get_containing_10k_refs",
          1),
    _rate("single client tasks sync", "tasks/s", "tasks_sync"),
    _rate("single client tasks async", "tasks/s", "tasks_async"),
    _rate("single client tasks and get batch", "batches/s", "tasks_and_get_batch", 1),
    _rate("multi client tasks async", "tasks/s", "multi_tasks_async"),
    _rate("single client wait 1k refs", "batches/s", "wait_1k_refs", 2),
    _rate("1:1 actor calls sync", "calls/s", "actor_sync"),
    _rate("1:1 actor calls async", "calls/s", "actor_async"),
    _rate("1:1 actor calls concurrent", "calls/s", "actor_concurrent"),
    _rate("1:n actor calls async", "calls/s", "actor_1n_async"),
    _rate("n:n actor calls async", "calls/s", "actor_nn_async"),
    _rate("1:1 async-actor calls sync", "calls/s", "async_actor_sync"),
    _rate("1:1 async-actor calls async", "calls/s", "async_actor_async"),
    _rate("1:1 async-actor calls with args async", "calls/s", "async_actor_args_async"),
    _rate("1:n async-actor calls async", "calls/s", "async_actor_1n_async"),
    _rate("n:n async-actor calls async", "calls/s", "async_actor_nn_async"),
    _rate("tasks awaited (asyncio.gather)", "tasks/s", "tasks_awaited"),
    _rate("actor calls awaited (asyncio.gather)", "calls/s", "actor_calls_awaited"),
    _rate("tasks async, 1k queued", "tasks/s", "tasks_queued"),
    _rate("tasks async, 10k queued", "tasks/s", "tasks_queued"),
    _rate("tasks async, 100k queued", "tasks/s", "tasks_queued"),
    _rate("placement group create/removal", "groups/s", "placement_group_create_removal"),
    Row("memory per idle actor", "memory per idle actor (RSS)", "MB", False, "actor_memory", 1),
    Row("memory per idle actor (PSS)", "memory per idle actor (PSS)", "MB", False,
        "actor_memory", 1),
]

SIDES = ("ray", "aray")
#: the floor for the task workloads: a plain process pool (this interpreter) and Dask
#: distributed (from the comparison venv, next to Ray), see aray/_perf.py
FLOORS = ("pool", "dask")
FLOOR_WORKLOADS = ("tasks_sync", "tasks_async", "tasks_queued")
NAMES = {"ray": "Ray", "aray": "aray", "pool": "process pool", "dask": "Dask"}


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gb": psutil.virtual_memory().total / 1e9,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "os": f"{platform.system()} {platform.release()}",
        "load": os.getloadavg(),
    }


# --- the Ray virtual environment ---------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def has_ray(python: Path) -> str | None:
    """Ray's version if ``python`` can import ray, numpy, psutil and distributed, else None."""
    if not python.exists():
        return None
    proc = subprocess.run([str(python), "-c",
                           "import distributed, numpy, psutil, ray; print(ray.__version__)"],
                          check=False, capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_ray(venv: Path) -> tuple[Path, str]:
    """Create (or reuse) the virtual environment with Ray; exit with status 2 if impossible."""
    python = venv_python(venv)
    version = has_ray(python)
    if version:
        print(f"Ray {version}: reusing the virtual environment {venv}", flush=True)
        return python, version
    if not python.exists():
        print(f"creating a virtual environment for Ray: {sys.executable} -m venv {venv}",
              flush=True)
        proc = subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"cannot create the virtual environment {venv} "
                     f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *RAY_PACKAGES]
    print(f"installing Ray: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        print(f"cannot install Ray into {venv} (pip exit {proc.returncode}), so there is "
              f"nothing to compare with. pip said:\n{tail}", file=sys.stderr)
        sys.exit(2)
    version = has_ray(python)
    if not version:
        print(f"Ray was installed into {venv} but `import ray` fails there", file=sys.stderr)
        sys.exit(2)
    print(f"installed Ray {version}", flush=True)
    return python, version


# --- processes ---------------------------------------------------------------------------------


def still_alive(procs: dict[int, float]) -> dict[int, float]:
    """Those of ``procs`` (pid -> create_time) that still run (same process, not a zombie)."""
    out = {}
    for pid, created in procs.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 0.05 and p.status() != psutil.STATUS_ZOMBIE:
                out[pid] = created
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(procs: dict[int, float], timeout: float) -> dict[int, float]:
    deadline = time.monotonic() + timeout
    left = still_alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = still_alive(left)
    return left


def describe(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:100]
    except psutil.Error:
        return "?"


def snapshot(pid: int, into: dict[int, float]) -> None:
    """Record ``pid``'s descendants (pid -> create_time) into ``into``."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for k in kids:
        try:
            into[k.pid] = k.create_time()
        except psutil.NoSuchProcess:
            pass


def by_session_dir(session_dir: str | None) -> dict[int, float]:
    """Processes whose command line names ``session_dir``, which is unique to one run (Ray
    passes it to gcs_server, raylet and its monitors)."""
    out: dict[int, float] = {}
    if not session_dir:
        return out
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            if any(session_dir in arg for arg in p.info["cmdline"] or []):
                out[p.info["pid"]] = p.info["create_time"]
        except (psutil.Error, TypeError):
            pass
    return out


def kill_recorded(procs: dict[int, float]) -> dict[int, float]:
    """SIGTERM, then SIGKILL, the recorded processes that still run; returns survivors."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in still_alive(procs):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        procs = wait_gone(procs, grace)
        if not procs:
            break
    return procs


def dump_stacks(pids: list[int]) -> None:
    """Print the Python stacks of a hung run's processes, if py-spy is installed."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return
    for pid in pids:
        proc = subprocess.run([str(py_spy), "dump", "--pid", str(pid)], check=False,
                              capture_output=True, text=True, timeout=30)
        print(f"  py-spy dump --pid {pid}:\n{proc.stdout}{proc.stderr}", flush=True)


# --- one workload process ----------------------------------------------------------------------


class Runner:
    def __init__(self, pythons: dict[str, Path], num_cpus: int, rounds: int):
        self.pythons = pythons
        self.num_cpus = num_cpus
        self.rounds = rounds
        self.leaks: list[str] = []
        self.failures: list[str] = []
        self.versions: dict[str, str] = {}
        self.shutdown_s: dict[str, list[float]] = {s: [] for s in (*SIDES, *FLOORS)}

    def run(self, side: str, workload: Workload, n: int) -> dict | None:
        cmd = [str(self.pythons[side]), "-P", str(WORKLOADS), side, workload.key, str(n),
               str(self.num_cpus), str(self.rounds)]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        seen: dict[int, float] = {}
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=HERE)
            deadline = time.monotonic() + CHILD_TIMEOUT
            timed_out = False
            while child.poll() is None:
                snapshot(child.pid, seen)  # a second record of the runtime's processes
                if time.monotonic() > deadline:
                    timed_out = True
                    snapshot(child.pid, seen)
                    dump_stacks([child.pid, *seen])
                    child.kill()
                    child.wait()
                    break
                time.sleep(1.0)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        result = None
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        if result:
            seen.update({pid: created for pid, created in result["pids"]})
            self.versions[side] = result["version"]
            self.shutdown_s[side].append(result["shutdown_s"])
        seen.update(by_session_dir(result and result.get("session_dir")))
        self.check_gone(side, workload.key, seen)
        if timed_out or child.returncode != 0 or result is None:
            why = "timed out" if timed_out else f"exit {child.returncode}"
            tail = "\n    ".join((stdout + stderr).strip().splitlines()[-15:])
            self.failures.append(f"{NAMES[side]} {workload.key}: {why}")
            print(f"  FAILED {NAMES[side]} {workload.key} ({why}):\n    {tail}", flush=True)
            return None
        return result["results"]

    def check_gone(self, side: str, key: str, seen: dict[int, float]) -> None:
        left = wait_gone(seen, 20.0)
        if not left:
            return
        names = ", ".join(f"{pid} ({describe(pid)})" for pid in left)
        self.leaks.append(f"{NAMES[side]} {key}: {names}")
        print(f"  LEAK after {NAMES[side]} {key}: {names}; killing them", flush=True)
        left = kill_recorded(left)
        if left and side == "ray":
            # our own Ray processes survived SIGKILL by pid: let Ray clean up
            subprocess.run([str(self.pythons["ray"].parent / "ray"), "stop", "--force"],
                           check=False, capture_output=True, text=True, timeout=120)


# --- aggregation and the table -----------------------------------------------------------------


def summarize(samples: list[float], higher_is_better: bool) -> tuple[float, float] | None:
    if not samples:
        return None
    best = max(samples) if higher_is_better else min(samples)
    return best, statistics.median(samples)


def fmt(x: float | None, digits: int) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def table_rows(samples: dict, reps: int) -> list[list[str]]:
    rows = []
    for row in ROWS:
        cells = [row.label, row.unit]
        stats = {}
        for side in SIDES:
            s = summarize(samples[side].get(row.metric, []), row.higher_is_better)
            stats[side] = s
            cells += [fmt(s and s[0], row.digits), fmt(s and s[1], row.digits)]
        if (row.compared and stats["ray"] and stats["aray"] and stats["ray"][0] > 0
                and stats["aray"][0] > 0):
            r, a = stats["ray"][0], stats["aray"][0]
            ratio = a / r if row.higher_is_better else r / a
            cells.append(f"{ratio:.2f}x")
        else:
            cells.append("-")
        rows.append(cells)
    return rows


HEADER = ["workload", "unit", "Ray best", "Ray median", "aray best", "aray median",
          "aray vs Ray"]


FLOOR_HEADER = ["workload", "unit", "aray best", "process pool best", "Dask best",
                "aray vs pool", "aray vs Dask"]


def floor_rows(samples: dict) -> list[list[str]]:
    """The task rows against the floor: aray, a plain process pool and Dask (best values;
    the ratios are aray's rate over theirs, > 1 when aray is faster)."""
    rows = []
    for row in ROWS:
        if row.workload not in FLOOR_WORKLOADS:
            continue
        best = {side: summarize(samples[side].get(row.metric, []), row.higher_is_better)
                for side in ("aray", *FLOORS)}
        cells = [row.label, row.unit] + [fmt(best[s] and best[s][0], row.digits)
                                         for s in ("aray", *FLOORS)]
        for side in FLOORS:
            if best["aray"] and best[side] and best[side][0] > 0:
                cells.append(f"{best['aray'][0] / best[side][0]:.2f}x")
            else:
                cells.append("-")
        rows.append(cells)
    return rows


def text_table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(r) + " |")
    return "\n".join(lines)


def slower_rows(rows: list[list[str]]) -> list[str]:
    """The rows where aray is worse than Ray (ratio < 1)."""
    out = []
    for r in rows:
        if r[-1].endswith("x") and float(r[-1][:-1]) < 1:
            out.append(f"{r[0]} ({r[-1]})")
    return out


WHY: dict[str, str] = {}  # a workload's name -> why aray is behind there, when it is


def machine_line(m: dict, versions: dict, num_cpus: int) -> str:
    return (f"{m['cpus']} CPUs ({m['cpu_model']}), {m['ram_gb']:.1f} GB RAM, {m['os']}; "
            f"Python {m['python']}; Ray {versions.get('ray', '?')}, "
            f"aray {versions.get('aray', '?')}; num_cpus={num_cpus} for both; "
            f"load average at start {m['load'][0]:.2f}")


RATIO_NOTE = ("aray vs Ray: aray/Ray for rates, Ray/aray for times and memory, both from the "
              "best values, so > 1 always means aray is better")


# --- docs/benchmarks.md ------------------------------------------------------------------------


def write_docs(rows, floor, m, versions, args, reps, total_s) -> None:
    mode = " --quick" if args.quick else ""
    n = {w.key: (w.n_quick if args.quick else w.n) for w in WORKLOADS_LIST}
    date = datetime.date.today().isoformat()
    page = f"""# Benchmarks: Ray and aray side by side

aray has Ray Core's API, so the same benchmark code runs on both. `benchmarks/compare.py` runs
a set of workloads modelled on Ray's own microbenchmark (`ray microbenchmark`, from Ray's
`python/ray/_private/ray_perf.py`) on Ray and on aray, on the same machine, in one run, and
prints them side by side. The numbers below come from one such run.

## Reproduce

```bash
python benchmarks/compare.py{mode} --write-docs
```

To run the same workloads on aray alone, as Ray's `ray microbenchmark` does, use
`aray microbenchmark` (`--filter TEXT` for some of them, `--scale 0.1` for a quick look); it
prints one line per workload, `NAME per second MEAN +- STD`, with Ray's names.

The script creates a virtual environment for Ray on first use (`python -m venv
/tmp/aray-ray-venv`, then `pip install ray numpy psutil dask[distributed]`; `--ray-venv PATH`
puts it elsewhere), so Ray never becomes a dependency of aray; aray runs with the interpreter that
runs the script. `--quick` runs each workload once per side with smaller n (the time a full run
took is under Machine below); `--write-docs` rewrites this page with the run's numbers. Run it on an
idle machine: other load changes the numbers a lot, most of all the sync round trips.

## Machine

```text
{machine_line(m, versions, args.num_cpus)}
run on {date}: {reps} repetition(s) per workload and side, {ROUNDS} timed rounds each; {total_s / 60:.1f} minutes in all
```

## Results

{RATIO_NOTE}. Rates are operations per second (more is better); times are seconds and memory
is MB (10^6 bytes), less is better.

{markdown_table(rows)}

{put_vs_memcpy(rows)}
{slower_text(rows)}
## Against the floor: a process pool and Dask

The per-task cost of any Python runtime has a floor: a plain
`concurrent.futures.ProcessPoolExecutor` with `{args.num_cpus}` processes, which pickles each
call to a worker and its result back and does nothing else (no scheduling across machines,
no object store, no fault tolerance). The task workloads also run on it, and on Dask
distributed (a `LocalCluster` of `{args.num_cpus}` single-threaded worker processes, Dask
{versions.get('dask', '?')}), through adapters in `aray/_perf.py` that give them `remote`
and `get`. The ratios are aray's rate over theirs (> 1: aray is faster).

{markdown_table(floor, FLOOR_HEADER) if floor else "(not measured in this run)"}

## Reading the numbers

- **A small machine.** A local Ray cluster is about ten processes (gcs_server, raylet,
  dashboard and its agent, the runtime-environment agent, monitors, workers), which share
  the {m['cpus']} CPUs with the driver; Ray is built for bigger machines, and its own published
  microbenchmark numbers, from much bigger ones, are higher than Ray's column here. aray
  runs a node process, a worker template and the workers.
- **Small objects.** aray keeps a small object (from `put` or a task) inline in its owner's
  process: `get` deserializes it anew each time, without leaving the calling thread. Ray's
  `put` stores every object in its shared-memory object store through the raylet (hence
  "(Plasma Store)" in Ray's names for these two workloads).
- **RSS and PSS.** aray's workers are forked from a template process, so much of their
  memory is shared; summed RSS counts it once per process, summed PSS once in all.
- **Put gigabytes.** Ray's workload puts an array made by `np.zeros`, whose pages are all
  the kernel's one zero page until written: reading it hits the CPU cache, which flatters
  both the put and the copy measured next to it (hence copy rates far above the memory's).
  `python benchmarks/bench_store.py` puts a 1 GiB array of ones instead, against `np.copyto`
  of the same array into touched pages, which is the fairer measure of the store.

## How it is measured

- **Same code, same resources.** `aray/_perf.py` holds the workloads once; it imports `ray`
  or `aray` by the name given on its command line (and nothing of aray otherwise, so it
  runs on Ray's interpreter). Both sides start a local
  cluster with `init(num_cpus={args.num_cpus})` and their default settings otherwise (Ray
  starts its dashboard, monitors and {args.num_cpus} prestarted workers with it).
- **A fresh process per measurement.** Each workload runs in a new interpreter per side and
  repetition (the Ray one from Ray's virtual environment), which calls `init`, runs one
  untimed warm-up round, then {ROUNDS} timed rounds, then `shutdown`. The repetitions
  alternate the sides (Ray, aray, aray, Ray, ...). *Best* is the best timed round of all
  repetitions, *median* the median of them all.
- **Nothing left behind.** The script records the pid of every process under each workload
  process (and, for Ray, every process naming that run's session directory) and checks that
  they have all exited once the process has called `shutdown()` and exited.

| workload | what one operation is (n per timed round) |
|---|---|
| init to first result | in a fresh process (imports done): `init(num_cpus={args.num_cpus})` until `get(f.remote())` of a trivial task returns |
| idle memory (RSS) | in the same process, 2 s later: the summed RSS of the driver process and all its descendants (every process of the runtime: Ray's gcs_server, raylet, dashboard, monitors, agents and workers; aray's node process, worker template and workers) |
| idle memory (PSS) | the same sum in PSS (proportional set size: pages shared by several processes are divided among them, so the sum is what the processes really take together; RSS counts a shared page in every process that maps it) |
| single client get calls | `get(ref)` of one small ready ref (n = {n['get_calls']:,}) |
| single client put calls | `put(0)` (n = {n['put_calls']:,}) |
| multi client put calls | one `put(0)`, made by tasks of 100 puts each, 10 tasks at a time (n = {n['multi_put_calls']:,}) |
| single client put gigabytes | GB per second of `put(np.zeros(100 * 1024 * 1024, dtype=np.int64))` (800 MB; n = {n['put_gigabytes']} puts). The array is Ray's: made by `np.zeros`, so its pages are the kernel's zero page until written, and reading it costs little |
| memcpy gigabytes (touched pages) | in the same process, GB per second of `np.copyto(dst, arr)` from that array into one whose pages are already touched: the machine's copy bandwidth, the bound for a put |
| single client get object containing 10k refs | `get(ref)` of a task's result that is a list of 10,000 refs (each from `put(1)` in the task) (n = {n['get_containing_10k_refs']}) |
| single client tasks sync | `get(f.remote())`, one round trip per task (n = {n['tasks_sync']:,}) |
| single client tasks async | `get([f.remote() for _ in range(n)])` (n = {n['tasks_async']:,}) |
| single client tasks and get batch | one batch `get([f.remote() for _ in range(1000)])`, counted as one operation as in Ray (n = {n['tasks_and_get_batch']} batches) |
| multi client tasks async | one task, submitted by one of 4 actors that each submit n/4 tasks and get them (n = {n['multi_tasks_async']:,}) |
| single client wait 1k refs | one batch: submit 1,000 tasks, then `ready, not_ready = wait(not_ready)` until none is left, counted as one operation as in Ray (n = {n['wait_1k_refs']} batches) |
| 1:1 actor calls sync | `get(a.small_value.remote())`, one round trip per call (n = {n['actor_sync']:,}) |
| 1:1 actor calls async | `get([a.small_value.remote() for _ in range(n)])` (n = {n['actor_async']:,}) |
| 1:1 actor calls concurrent | the same on an actor created with `.options(max_concurrency=16)` (a threaded actor) (n = {n['actor_concurrent']:,}) |
| 1:n actor calls async | one call, made by a client actor that calls each of k actors n/k times and gets the results; k is half the machine's CPUs (at least 1), as in Ray (n = {n['actor_1n_async']:,}) |
| n:n actor calls async | one call, made by one of 4 tasks that each call k actors n/4 times in all (n = {n['actor_nn_async']:,}) |
| 1:1 async-actor calls sync | `get(aa.small_value.remote())` on an actor whose methods are `async def` (n = {n['async_actor_sync']:,}) |
| 1:1 async-actor calls async | `get([aa.small_value.remote() for _ in range(n)])` (n = {n['async_actor_async']:,}) |
| 1:1 async-actor calls with args async | `get([aa.small_value_with_arg.remote(i) for i in range(n)])` (n = {n['async_actor_args_async']:,}) |
| 1:n async-actor calls async | 1:n actor calls async with async actors (n = {n['async_actor_1n_async']:,}) |
| n:n async-actor calls async | n:n actor calls async with async actors (n = {n['async_actor_nn_async']:,}) |
| tasks awaited (asyncio.gather) | in `asyncio.run`: `await asyncio.gather(*[f.remote() for _ in range(n)])`; the refs of both runtimes are awaitable (n = {n['tasks_awaited']:,}) |
| actor calls awaited (asyncio.gather) | the same with `a.small_value.remote()` (n = {n['actor_calls_awaited']:,}) |
| tasks async, 1k/10k/100k queued | single client tasks async with n = 1,000, 10,000 and 100,000 tasks queued at once, one round each: how the cost per task grows with the queue |
| memory per idle actor (RSS, PSS) | {n['actor_memory']} actors created (one call answered by each), idle for 2 s: the summed RSS (or PSS) of the whole process tree, minus the same sum before they were created, divided by {n['actor_memory']}. An idle worker that was already running and became an actor's process counts for that actor. One value per repetition. |

The trivial task is `def small_value(): return b"ok"`; the actors are those of Ray's
`ray_perf.py` (`small_value` returns `b"ok"`; `Actor` and the client actors are created with
`num_cpus=0`, as there). The workloads are written once, in `aray/_perf.py`, which is also
what `aray microbenchmark` runs; `python benchmarks/bench_core.py` measures more of aray
alone (see `benchmarks/README.md`).
"""
    # the soak's section (benchmarks/soak.py --write-docs) is that script's to write
    old = DOCS_PAGE.read_text() if DOCS_PAGE.exists() else ""
    soak = "## Soak: a 2-node cluster that loses a node"
    if soak in old:
        page = page.rstrip() + "\n\n" + old[old.index(soak):]
    DOCS_PAGE.write_text(page)
    add_to_nav()
    print(f"wrote {DOCS_PAGE.relative_to(ROOT)}", flush=True)


def put_vs_memcpy(rows) -> str:
    """Each side's put bandwidth over the copy bandwidth measured in the same process."""
    by = {r[0]: r for r in rows}
    put, copy = by.get("single client put gigabytes"), by.get("memcpy gigabytes (touched pages)")
    parts = []
    for name, col in (("aray", 4), ("Ray", 2)):
        try:
            parts.append(f"{name} {float(put[col]) / float(copy[col]):.2f}")
        except (TypeError, ValueError, ZeroDivisionError):
            pass
    if not parts:
        return ""
    return ("Put bandwidth over the machine's copy bandwidth, from the best rounds: "
            + ", ".join(parts) + ".\n")


def slower_text(rows) -> str:
    slower = slower_rows(rows)
    if not slower:
        return "In this run aray is ahead of Ray in every row.\n"
    text = "In this run aray is behind Ray in: " + ", ".join(slower) + ".\n"
    for r in rows:
        if f"{r[0]} ({r[-1]})" in slower and r[0] in WHY:
            text += f"\n**{r[0]}**: {WHY[r[0]]}\n"
    return text


def add_to_nav() -> None:
    """Add the page to mkdocs.yml's nav (after the last entry) unless it is there."""
    text = MKDOCS.read_text()
    if "benchmarks.md" in text:
        return
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip() == "nav:")
    last = start
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("  - "):
            last = i
        elif lines[i].strip():
            break
    lines.insert(last + 1, "  - Benchmarks: benchmarks.md\n")
    MKDOCS.write_text("".join(lines))


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition per side and smaller n")
    parser.add_argument("--ray-venv", default=DEFAULT_VENV,
                        help=f"the virtual environment for Ray (default {DEFAULT_VENV}); "
                             "created and filled with pip when it has no Ray")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the table into docs/benchmarks.md (and mkdocs.yml's nav)")
    parser.add_argument("--num-cpus", type=int, default=2,
                        help="num_cpus given to init() on both sides (default 2)")
    parser.add_argument("--only", nargs="+", metavar="WORKLOAD", choices=list(BY_KEY),
                        help="run only these workloads (for debugging; not with --write-docs)")
    parser.add_argument("--json", metavar="PATH", help="also write every sample to PATH")
    args = parser.parse_args()
    if args.only and args.write_docs:
        parser.error("--only cannot be combined with --write-docs")
    reps = 1 if args.quick else 3

    m = machine()
    ray_python, ray_version = ensure_ray(Path(args.ray_venv))
    runner = Runner({"ray": ray_python, "aray": Path(sys.executable),
                     "pool": Path(sys.executable), "dask": ray_python}, args.num_cpus, ROUNDS)
    runner.versions["ray"] = ray_version
    print(f"machine: {machine_line(m, runner.versions, args.num_cpus).rsplit('; Ray', 1)[0]}")
    if m["load"][0] > 0.5 * (m["cpus"] or 1):
        print(f"warning: the machine is busy (load average {m['load'][0]:.2f}); the numbers "
              "will be noisy", flush=True)
    print(f"{reps} repetition(s) per workload and side, 1 warm-up + {ROUNDS} timed rounds "
          f"each, num_cpus={args.num_cpus}\n", flush=True)

    samples: dict = {side: {} for side in (*SIDES, *FLOORS)}
    t_start = time.perf_counter()
    todo = [w for w in WORKLOADS_LIST if not args.only or w.key in args.only]
    for workload in todo:
        n = workload.n_quick if args.quick else workload.n
        t0 = time.perf_counter()
        sides = (*SIDES, *FLOORS) if workload.key in FLOOR_WORKLOADS else SIDES
        for rep in range(reps):
            order = sides if rep % 2 == 0 else sides[::-1]
            for side in order:
                results = runner.run(side, workload, n)
                for metric, values in (results or {}).items():
                    samples[side].setdefault(metric, []).extend(values)
        shown = []
        for row in ROWS:
            if row.workload == workload.key:
                best = {side: summarize(samples[side].get(row.metric, []), row.higher_is_better)
                        for side in SIDES}
                shown.append(f"{row.label}: Ray {fmt(best['ray'] and best['ray'][0], row.digits)}"
                             f", aray {fmt(best['aray'] and best['aray'][0], row.digits)} "
                             f"{row.unit}")
        print(f"[{time.perf_counter() - t_start:6.1f} s] {workload.key} "
              f"({time.perf_counter() - t0:.1f} s): " + "; ".join(shown), flush=True)
    total = time.perf_counter() - t_start

    rows = table_rows(samples, reps)
    print()
    print(f"Ray and aray on {machine_line(m, runner.versions, args.num_cpus)}")
    print(f"{reps} repetition(s) per workload and side, {ROUNDS} timed rounds each; "
          f"{total / 60:.1f} minutes")
    print(f"{RATIO_NOTE}\n")
    print(text_table(rows))
    floor = floor_rows(samples)
    if floor:
        print("\nThe task rows against the floor (best values; aray's rate over theirs)\n")
        print(text_table(floor, FLOOR_HEADER))
    print()
    extra = []
    for side in SIDES:
        s = samples[side]
        parts = []
        if s.get("idle processes"):
            parts.append(f"{statistics.median(s['idle processes']):.0f} processes when idle")
        if s.get("actor process RSS"):
            rss = statistics.median(s["actor process RSS"])
            reused = statistics.median(s["idle workers reused"])
            parts.append(f"RSS of one actor's process {rss:.1f} MB, idle workers taken over "
                         f"by the {BY_KEY['actor_memory'].n} actors {reused:.0f}")
        if runner.shutdown_s[side]:
            parts.append(f"shutdown() {statistics.median(runner.shutdown_s[side]):.2f} s (median)")
        extra.append(f"{NAMES[side]}: " + ", ".join(parts))
    print("\n".join(extra))

    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "versions": runner.versions,
                                               "samples": samples,
                                               "shutdown_s": runner.shutdown_s}, indent=1))
    slower = slower_rows(rows)
    print("aray is behind Ray in: " + (", ".join(slower) if slower else "nothing"))
    status = 0
    if runner.failures:
        print("FAILED: " + "; ".join(runner.failures))
        status = 1
    if runner.leaks:
        print("LEAK: processes left behind (killed by pid): " + "; ".join(runner.leaks))
        status = 1
    else:
        print("no process of either runtime left behind")
    if args.write_docs:
        if status:
            print("not writing the docs: the run was not clean")
        else:
            write_docs(rows, floor, m, runner.versions, args, reps, total)
    return status


if __name__ == "__main__":
    sys.exit(main())
