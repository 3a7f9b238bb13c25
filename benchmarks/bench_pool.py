"""``aray.util.multiprocessing.Pool.map`` against the standard library's ``multiprocessing.Pool``.

    python benchmarks/bench_pool.py [--items 100000] [--ms 1.0] [--processes N]
                                    [--repeat 1] [--sleep] [--quick]

Both pools get ``N`` processes (default: ``os.cpu_count()``; aray's cluster gets N CPUs)
and map a function that takes ``--ms`` milliseconds per item over ``range(--items)``, with
their default chunk sizes. The function spins on the CPU (``--sleep``: it sleeps instead).
``--repeat R`` times both R times, alternating them. The script prints each pool's
start-up time (aray's does not include ``aray.init``) and its best and median map times,
and the ratio of the best map times (aray / multiprocessing: below 1 means aray's pool is
faster). ``--quick``: 10,000 items.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

# the function must be importable by both pools' workers: this file's folder is on their path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def spin(x: int, seconds: float = 0.001) -> int:
    """Busy for ``seconds`` of wall time, on the CPU."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return x


def nap(x: int, seconds: float = 0.001) -> int:
    """Asleep for ``seconds``."""
    time.sleep(seconds)
    return x


def timed(pool_factory, func, items):
    start = time.perf_counter()
    pool = pool_factory()
    started = time.perf_counter()
    out = pool.map(func, items)
    mapped = time.perf_counter()
    pool.terminate()
    pool.join()
    assert out == list(items), "wrong results"
    return started - start, mapped - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--ms", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds, each timing both pools one after the other")
    parser.add_argument("--sleep", action="store_true", help="the function sleeps")
    parser.add_argument("--quick", action="store_true", help="10,000 items")
    args = parser.parse_args()
    n = 10_000 if args.quick else args.items
    import functools
    import statistics

    import bench_pool  # this module by its name, so that workers import it (not __main__)

    import aray
    from aray.util.multiprocessing import Pool

    func = functools.partial(bench_pool.nap if args.sleep else bench_pool.spin,
                             seconds=args.ms / 1000)
    items = range(n)
    kind = "sleeps" if args.sleep else "spins"
    print(f"Pool.map over {n} items, a function that {kind} {args.ms:g} ms, "
          f"{args.processes} processes, {args.repeat} round(s), machine: {os.cpu_count()} CPUs")

    times: dict[str, list[tuple[float, float]]] = {"multiprocessing.Pool": [], "aray Pool": []}
    aray.init(num_cpus=args.processes)
    try:
        # the rounds alternate the pools, so that a change of the machine's other load
        # falls on both
        for _ in range(args.repeat):
            times["multiprocessing.Pool"].append(
                timed(lambda: multiprocessing.Pool(args.processes), func, items))
            times["aray Pool"].append(timed(lambda: Pool(args.processes), func, items))
    finally:
        aray.shutdown()
    best = {}
    for name, runs in times.items():
        maps = [m for _, m in runs]
        best[name] = min(maps)
        print(f"{name + ':':22s}start {min(s for s, _ in runs):.3f} s, map best "
              f"{min(maps):.3f} s, median {statistics.median(maps):.3f} s")
    print(f"ratio aray / multiprocessing (best maps): "
          f"{best['aray Pool'] / best['multiprocessing.Pool']:.3f}")


if __name__ == "__main__":
    main()
