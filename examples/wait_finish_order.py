"""Process results in the order they finish (question 12 of the seed tutorial), three ways.

1. The tutorial's loop: `aray.wait(remaining, num_returns=1)` hands back one ready ref at a
   time, and the rest.
2. `aray.as_completed(refs)` with `for`: the same, with less code, and a fixed amount of
   work per ref (a loop of `aray.wait` looks at every remaining ref on each call).
3. `aray.as_completed(refs)` with `async for`, from asyncio code, awaiting each ref.

Each way submits 8 tasks that sleep for shuffled times, and shows that the results come
back shortest first, not in submission order.

Run it with:

    python examples/wait_finish_order.py
"""

import asyncio
import random
import time

import aray

# 8 durations, 0.1 s apart, in a shuffled submission order
DURATIONS = [round(0.1 * (i + 1), 1) for i in range(8)]
random.Random(12).shuffle(DURATIONS)


# The tasks sleep rather than compute, so each asks for a quarter of a CPU: all 8 run at
# once on 2 CPUs. (With the default of 1 CPU each, only 2 would run at a time, in
# submission order, and the finish order would mix both orders.)
@aray.remote(num_cpus=0.25)
def f(seconds):
    time.sleep(seconds)
    return seconds


def show(way, finished, start):
    print(f"{way:<27} {finished}  ({time.time() - start:.2f} s)")


def with_wait():
    start = time.time()
    remaining_result_ids = [f.remote(s) for s in DURATIONS]
    results = []
    while len(remaining_result_ids) > 0:
        result_ids, remaining_result_ids = aray.wait(remaining_result_ids, num_returns=1)
        results.append(aray.get(result_ids[0]))
    show("aray.wait(num_returns=1):", results, start)


def with_as_completed():
    start = time.time()
    refs = [f.remote(s) for s in DURATIONS]
    results = [aray.get(ref) for ref in aray.as_completed(refs)]
    show("for ... as_completed:", results, start)


async def with_async_as_completed():
    start = time.time()
    refs = [f.remote(s) for s in DURATIONS]
    results = []
    async for ref in aray.as_completed(refs, timeout=10):
        results.append(await ref)
    show("async for ... as_completed:", results, start)


if __name__ == "__main__":
    aray.init(num_cpus=2)
    # Start the 8 workers first, so that worker start-up does not blur the first run.
    aray.get([f.remote(0.2) for _ in range(8)])
    print("submission order:          ", DURATIONS)
    with_wait()
    with_as_completed()
    asyncio.run(with_async_as_completed())
    aray.shutdown()
