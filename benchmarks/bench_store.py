"""Object store benchmark: large put/get against the machine's copy bandwidth, and churn.

    python benchmarks/bench_store.py [--gib 1] [--churn 100000]

* memcpy: ``np.copyto`` into an array whose pages are already touched (the bound for a put)
* a copy into a fresh /dev/shm file (its pages faulted in by the copy: the bound for a first
  put; then faulted in by one madvise call first, and with the file's pages allocated before
  so that the copy only maps them), the first put of a fresh cluster (into shared memory
  never written before), then put / get of one large array (get from the same node maps
  shared memory: no copy)
* churn: many tasks each returning 1 MiB, dropped as they finish, in a 100 MiB store
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import time

import numpy as np
from compare import cpu_model  # benchmarks/ is on sys.path when this script runs

import aray


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


#: madvise(MADV_POPULATE_WRITE) (Linux 5.14): fault a range in with one call
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def fresh_copy(a: np.ndarray, how: str = "faults") -> float:
    """Seconds to copy ``a`` into a new /dev/shm file's mapping (what the first put of a
    fresh cluster does). ``how``: ``faults``, the copy faults each page in; ``populate``,
    one madvise(MADV_POPULATE_WRITE) call faults them all in first (timed too);
    ``allocated``, the file's pages were allocated before (``posix_fallocate``, not timed),
    so the copy only maps them: what a warmed-up arena would give a process's first put.
    """
    path = f"/dev/shm/aray-bench-fresh-{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, a.nbytes)
        if how == "allocated":
            os.posix_fallocate(fd, 0, a.nbytes)
        with mmap.mmap(fd, a.nbytes) as m:
            dst = np.frombuffer(m, dtype=a.dtype)
            start = time.perf_counter()
            if how == "populate":
                m.madvise(MADV_POPULATE_WRITE)
            np.copyto(dst, a)
            took = time.perf_counter() - start
            del dst
        return took
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0, help="size of the large array")
    parser.add_argument("--churn", type=int, default=20_000, help="tasks in the churn test")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}")

    n = int(args.gib * 2**30) // 8
    a = np.ones(n)
    dst = np.empty_like(a)
    np.copyto(dst, a)  # touch every page of the destination first
    copy = best_of(3, lambda dst=dst: np.copyto(dst, a))
    del dst
    print(f"memcpy (touched pages)  {a.nbytes / copy / 1e9:6.2f} GB/s")

    fresh = fresh_copy(a)
    print(f"copy into fresh shm      {a.nbytes / fresh / 1e9:6.2f} GB/s  (page faults: the "
          "bound for a first put)")
    try:
        populated = fresh_copy(a, "populate")
        print(f"  populated first        {a.nbytes / populated / 1e9:6.2f} GB/s  (one madvise "
              "call faults the pages in)")
    except OSError as exc:  # a kernel before 5.14
        print(f"  populated first        skipped: {exc}")
    allocated = fresh_copy(a, "allocated")
    print(f"  pages allocated before {a.nbytes / allocated / 1e9:6.2f} GB/s  (the copy only "
          "maps them)")

    aray.init(num_cpus=2)
    start = time.perf_counter()
    ref = aray.put(a)  # the first put of a fresh cluster writes pages never touched before
    first = time.perf_counter() - start
    del ref
    print(f"first put {args.gib:g} GiB       {a.nbytes / first / 1e9:6.2f} GB/s  "
          f"({a.nbytes / first / (a.nbytes / copy):.2f}x memcpy)")
    puts, gets = [], []
    for _ in range(3):
        start = time.perf_counter()
        ref = aray.put(a)
        puts.append(time.perf_counter() - start)
        start = time.perf_counter()
        b = aray.get(ref)
        gets.append(time.perf_counter() - start)
        del ref, b
    print(f"put {args.gib:g} GiB             {a.nbytes / min(puts) / 1e9:6.2f} GB/s  "
          f"({a.nbytes / min(puts) / (a.nbytes / copy):.2f}x memcpy)")
    print(f"get {args.gib:g} GiB             {min(gets) * 1e3:6.2f} ms (zero-copy map)")
    aray.shutdown()

    aray.init(num_cpus=2, object_store_memory=100 * 2**20)

    @aray.remote
    def make(i):
        return np.full(2**20 // 8, i)  # 1 MiB

    start = time.perf_counter()
    window: list = []
    for i in range(args.churn):
        window.append(make.remote(i))
        if len(window) >= 40:
            ready, window = aray.wait(window, num_returns=20)
    aray.wait(window, num_returns=len(window))
    del window
    took = time.perf_counter() - start
    stats = aray.object_store_stats()
    print(f"churn: {args.churn} x 1 MiB results in a 100 MiB store: {took:.1f} s "
          f"({args.churn / took:,.0f} tasks/s); at the end {stats['num_objects']} objects, "
          f"{stats['num_spilled']} spilled")
    aray.shutdown()


if __name__ == "__main__":
    main()
