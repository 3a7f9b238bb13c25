"""Zero-copy numpy arrays: put a 200 MB array once, and let several tasks read it.

- `aray.put` writes the array once to the node's shared-memory object store.
- Tasks get the ref and receive the array itself. Each worker maps the stored object
  read-only and gets a view of it: no copy, whatever the size, so four tasks reading
  200 MB use 200 MB of memory, not 1 GB.
- Arrays that come out of aray, in tasks and from `aray.get`, are read-only views
  (`flags.writeable` and `flags.owndata` are False), because other processes read the same
  memory. Copy one to change it.
- `aray.object_store_stats()` shows what the store holds.

Run it with:

    python examples/large_arrays.py
"""

import time

import numpy as np

import aray

N = 25_000_000  # float64: 200 MB


@aray.remote
def partial_sum(array, part, parts):
    """Sum one slice of the array; report how the task sees the array."""
    start = time.perf_counter()
    chunk = array[part * len(array) // parts:(part + 1) * len(array) // parts]
    total = float(chunk.sum())
    return {"part": part, "sum": total, "seconds": time.perf_counter() - start,
            "writeable": array.flags.writeable, "owndata": array.flags.owndata}


@aray.remote
def stats(array):
    return float(array.min()), float(array.max()), float(array.mean())


if __name__ == "__main__":
    aray.init(num_cpus=2)
    array = np.arange(N, dtype=np.float64)
    print(f"array: {array.nbytes / 1e6:.0f} MB")

    start = time.perf_counter()
    ref = aray.put(array)  # one copy, into shared memory
    print(f"aray.put: {time.perf_counter() - start:.2f} s")

    start = time.perf_counter()
    parts = aray.get([partial_sum.remote(ref, i, 4) for i in range(4)])
    low, high, mean = aray.get(stats.remote(ref))
    print(f"4 tasks summed a quarter each, 1 task took min/max/mean, all on the same ref: "
          f"{time.perf_counter() - start:.2f} s")
    for p in parts:
        print(f"  part {p['part']}: sum {p['sum']:.4e} in {p['seconds']:.3f} s; the task's array: "
              f"writeable={p['writeable']}, owndata={p['owndata']}")
    assert sum(p["sum"] for p in parts) == float(array.sum())
    print(f"  min {low:.0f}, max {high:.0f}, mean {mean:.1f}")

    start = time.perf_counter()
    view = aray.get(ref)
    elapsed_ms = (time.perf_counter() - start) * 1000
    print(f"aray.get: {elapsed_ms:.1f} ms for 200 MB (a view, not a copy): "
          f"writeable={view.flags.writeable}, owndata={view.flags.owndata}")
    try:
        view[0] = -1.0
    except ValueError as err:
        print(f"  writing to it raises ValueError: {err}")
    mine = view.copy()  # a private, writeable copy
    mine[0] = -1.0
    print(f"  a copy is writeable: mine[0] = {mine[0]}, the stored array still has {view[0]}")

    s = aray.object_store_stats()
    print(f"aray.object_store_stats(): {s}")
    print(f"  {s['num_objects']} object(s), {s['used_bytes'] / 1e6:.0f} MB used of "
          f"{s['capacity_bytes'] / 1e6:.0f} MB")
    del view, mine
    aray.shutdown()
