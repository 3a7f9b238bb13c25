"""aray quickstart: tasks, dependencies, put, wait, an actor, and the same work in asyncio."""

import asyncio
import time

import aray


@aray.remote
def square(x):
    return x * x


@aray.remote
def add(a, b):
    return a + b


@aray.remote
def scaled_sum(values, factor):
    return sum(values) * factor


@aray.remote
def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


@aray.remote
class Counter:
    """An actor: state that lives in its own worker process."""

    def __init__(self):
        self.count = 0

    def add(self, n):
        self.count += n
        return self.count


def sync_demo():
    # .remote() returns an ObjectRef at once; the tasks run in worker processes.
    print("squares:", aray.get([square.remote(i) for i in range(5)]))
    # Refs passed into a task: add runs once both squares are ready.
    print("3*3 + 4*4 =", aray.get(add.remote(square.remote(3), square.remote(4))))
    # Put a value once, pass its ref to many tasks.
    data = aray.put(list(range(1000)))
    print("scaled sums:", aray.get([scaled_sum.remote(data, k) for k in (1, 2, 3)]))
    # aray.wait hands back results as they finish.
    pending, order = [sleep_for.remote(s) for s in (0.6, 0.1, 0.3)], []
    while pending:
        ready, pending = aray.wait(pending, num_returns=1)
        order.append(aray.get(ready[0]))
    print("finished in order:", order)
    # An actor keeps state between calls; calls from one caller run in order.
    counter = Counter.remote()
    print("counter:", aray.get([counter.add.remote(n) for n in (1, 2, 3)]))


async def async_demo():
    # The same refs are awaitable, so asyncio code never blocks on them.
    print("squares:", await asyncio.gather(*[square.remote(i) for i in range(5)]))
    print("3*3 + 4*4 =", await add.remote(square.remote(3), square.remote(4)))
    data = aray.put(list(range(1000)))
    print("scaled sums:", await asyncio.gather(*[scaled_sum.remote(data, k) for k in (1, 2, 3)]))
    order = []
    async for ref in aray.as_completed([sleep_for.remote(s) for s in (0.6, 0.1, 0.3)]):
        order.append(await ref)
    print("finished in order:", order)
    counter = Counter.remote()
    print("counter:", await asyncio.gather(*[counter.add.remote(n) for n in (1, 2, 3)]))


if __name__ == "__main__":
    aray.init()  # start a local cluster that offers this machine's CPUs
    print("-- sync --")
    sync_demo()
    print("-- asyncio --")
    asyncio.run(async_demo())
    aray.shutdown()
    print("done")
