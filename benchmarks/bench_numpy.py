"""A numpy grid search as tasks against the same loop run serially.

    python benchmarks/bench_numpy.py [--tasks 200] [--num-cpus 2] [--quick] [--json PATH]

Each point of the grid fits a ridge regression with numpy (``X.T @ X`` and a solve on a
3000 x 200 matrix: BLAS work). The script times:

* ``serial``: the points one after another in this process (its BLAS may use every core);
* ``aray``: one task per point on ``init(num_cpus=N)``; each worker's BLAS gets the task's
  one CPU (aray sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and the like);
* ``aray, one BLAS thread per core``: the same with those variables set to the machine's
  core count before aray starts (aray keeps a value set by the user), which is what every
  worker would do without aray setting them: N workers each running one BLAS thread per core.

``--quick``: 40 points.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from compare import cpu_model  # benchmarks/ is on sys.path when this script runs

VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def fit(seed: int, n: int = 3000, d: int = 200) -> float:
    """One grid point: a ridge fit on random data; returns its training error."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + rng.standard_normal(n)
    alpha = 10.0 ** (seed % 7 - 3)
    w = np.linalg.solve(X.T @ X + alpha * np.eye(d), X.T @ y)
    return float(np.mean((X @ w - y) ** 2))


def run_tasks(points: int, num_cpus: int) -> float:
    """In this process: the points as aray tasks; returns the seconds they took."""
    import aray

    aray.init(num_cpus=num_cpus)
    try:
        task = aray.remote(fit)
        aray.get([task.remote(i) for i in range(num_cpus)])  # workers up, numpy imported
        start = time.perf_counter()
        aray.get([task.remote(i) for i in range(points)])
        return time.perf_counter() - start
    finally:
        aray.shutdown()


def in_child(points: int, num_cpus: int, env: dict) -> float:
    """run_tasks in a fresh interpreter with ``env`` (the thread variables)."""
    # as a script, so that ``fit`` belongs to __main__ and travels to the workers by value
    proc = subprocess.run([sys.executable, __file__, "--child", "--tasks", str(points),
                           "--num-cpus", str(num_cpus)], capture_output=True, text=True,
                          env=env, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("SECONDS "):
            return float(line.split()[1])
    raise RuntimeError(f"the tasks failed:\n{proc.stdout}{proc.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="grid points")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="40 points")
    parser.add_argument("--json", metavar="PATH", help="write the figures to PATH")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    points = 40 if args.quick else args.tasks
    if args.child:
        print("SECONDS", run_tasks(points, args.num_cpus))
        return 0
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}")
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    cores = str(os.cpu_count() or 1)

    fit(0)  # numpy imported, caches warm
    start = time.perf_counter()
    for i in range(points):
        fit(i)
    serial = time.perf_counter() - start
    tasks = in_child(points, args.num_cpus, clean)
    oversubscribed = in_child(points, args.num_cpus, {**clean, **dict.fromkeys(VARIABLES, cores)})
    figures = {"points": points, "num_cpus": args.num_cpus, "serial_s": serial,
               "aray_s": tasks, "aray_thread_per_core_s": oversubscribed}
    print(f"{points} grid points, serial                        {serial:6.2f} s")
    print(f"{points} grid points as aray tasks on {args.num_cpus} CPUs          {tasks:6.2f} s  "
          f"({serial / tasks:.2f}x the serial loop)")
    print(f"the same with one BLAS thread per core per worker  {oversubscribed:6.2f} s  "
          f"({serial / oversubscribed:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
