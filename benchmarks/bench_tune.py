"""The overhead of aray.tune per trial and per reported result, and Ray Tune's beside it.

    python benchmarks/bench_tune.py [--trials 40] [--results 2000] [--num-cpus 2]
                                    [--rounds 3] [--ray] [--ray-venv PATH] [--json PATH]

The trainables do nothing but report, so what is timed is the Tuner's own work:

* ``per trial``: ``fit()`` of ``--trials`` trials (a grid), each reporting one result, with
  ``--num-cpus`` trials at once (each takes 1 CPU): the wall time divided by the trials.
  It includes starting each trial's actor (a worker process) and ending it.
* ``per result``: ``fit()`` of one trial reporting ``--results`` results, less the time
  of a trial that reports one: the wall time per result (the round trip of ``report`` to
  the Tuner and its decision, and the result's lines in result.json and progress.csv).

Each side runs in a fresh process (``-P``, so this directory shadows nothing), with one
untimed warm-up fit, then ``--rounds`` timed ones; the best and the median are printed.
``--ray`` runs the same under Ray Tune, from the virtual environment benchmarks/compare.py
uses (``--ray-venv``, default /tmp/aray-ray-venv, with ``pip install 'ray[tune]'`` added
to it on first use); Ray never becomes a dependency of aray.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_VENV = "/tmp/aray-ray-venv"


def child(side: str, trials: int, results: int, num_cpus: int, rounds: int) -> dict:
    """Run the workloads on one runtime (in this process) and return the timings."""
    if side == "ray":
        import ray
        from ray import tune
    else:
        import aray as ray
        from aray import tune
    ray.init(num_cpus=num_cpus)

    def one(config):
        tune.report({"x": config["i"]})

    def many(config):
        for i in range(config["n"]):
            tune.report({"i": i})

    def fit(trainable, space):
        storage = tempfile.mkdtemp(prefix="bench-tune-")
        t0 = time.perf_counter()
        grid = tune.Tuner(trainable, param_space=space,
                          run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
        elapsed = time.perf_counter() - t0
        assert grid.num_errors == 0, grid.errors
        return elapsed

    fit(one, {"i": tune.grid_search(list(range(num_cpus)))})  # warm-up: workers, imports
    out: dict[str, list[float]] = {"per trial (ms)": [], "per result (ms)": []}
    for _ in range(rounds):
        wall = fit(one, {"i": tune.grid_search(list(range(trials)))})
        out["per trial (ms)"].append(wall / trials * 1e3)
        base = fit(many, {"n": 1})
        wall = fit(many, {"n": results})
        out["per result (ms)"].append((wall - base) / (results - 1) * 1e3)
    ray.shutdown()
    return out


def ensure_ray_tune(venv: str) -> str:
    """The Python of ``venv``, with Ray Tune installed there (compare.py's venv, plus
    ``ray[tune]``)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pathlib import Path

    from compare import ensure_ray

    python, _ = ensure_ray(Path(venv))
    check = subprocess.run([str(python), "-c", "import ray.tune, pandas"], capture_output=True)
    if check.returncode != 0:
        print(f"installing ray[tune] into {venv}", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "ray[tune]"], check=True)
    return str(python)


def run_side(python: str, side: str, args: argparse.Namespace) -> tuple[str, dict]:
    cmd = [python, "-P", os.path.abspath(__file__), "--child", side, "--trials",
           str(args.trials), "--results", str(args.results), "--num-cpus", str(args.num_cpus),
           "--rounds", str(args.rounds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    if proc.returncode != 0 or "RESULT " not in proc.stdout:
        sys.exit(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    version = result.pop("version")
    return version, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--results", type=int, default=2000)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="run Ray Tune too")
    parser.add_argument("--ray-venv", default=DEFAULT_VENV)
    parser.add_argument("--json", help="write the timings to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = child(args.child, args.trials, args.results, args.num_cpus, args.rounds)
        module = __import__("ray" if args.child == "ray" else "aray")
        print("RESULT " + json.dumps({**out, "version": module.__version__}), flush=True)
        return

    sides = [("aray", sys.executable)]
    if args.ray:
        sides.append(("ray", ensure_ray_tune(args.ray_venv)))
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; {args.trials} trials of "
          f"one result, one trial of {args.results} results, {args.num_cpus} trials at once, "
          f"{args.rounds} rounds")
    everything = {}
    for side, python in sides:
        version, result = run_side(python, side, args)
        everything[side] = {"version": version, **result}
        for metric, samples in result.items():
            print(f"{side} {version:8s} {metric:18s} best {min(samples):8.2f}   "
                  f"median {statistics.median(samples):8.2f}")
    if args.ray:
        for metric in everything["aray"]:
            if metric == "version":
                continue
            ratio = min(everything["ray"][metric]) / min(everything["aray"][metric])
            print(f"{metric}: Ray / aray = {ratio:.2f} (> 1: aray has less overhead)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1)


if __name__ == "__main__":
    main()
