"""An async actor serves many calls at once; a sync actor serves them one after the other.

The actors are "fetchers" that simulate a slow remote service: each fetch waits 0.1 s.

- A sync actor (plain `def` methods, the default `max_concurrency=1`) runs one call at a
  time: 12 fetches take 12 x 0.1 s.
- An async actor (`async def` methods) runs each call as an asyncio task on its worker's
  event loop, so while one fetch waits, the others go on. `max_concurrency` caps how many
  run at once, which makes it a simple rate limiter: with `max_concurrency=4`, 12 fetches
  take 3 rounds of 0.1 s. Without it (the default for async actors is 1000), all 12 run at
  once.
- For comparison, a threaded actor (plain `def` methods and `max_concurrency=4`) runs up
  to 4 calls at once, each on a thread of its own.

Each actor also records the most calls it ran at the same time. All the calls are made
from asyncio code and awaited with `asyncio.gather`.

Run it with:

    python examples/async_actors.py
"""

import asyncio
import threading
import time

import aray

CALLS = 12
LATENCY = 0.1  # seconds per simulated fetch


@aray.remote
class SyncFetcher:
    def __init__(self):
        self.running = self.peak = 0

    def fetch(self, url):
        self.running += 1
        self.peak = max(self.peak, self.running)
        time.sleep(LATENCY)  # a blocking client
        self.running -= 1
        return f"<page {url}>"

    def peak_concurrency(self):
        return self.peak


@aray.remote(max_concurrency=4)
class ThreadedFetcher:
    def __init__(self):
        self.lock = threading.Lock()  # the threads share the instance
        self.running = self.peak = 0

    def fetch(self, url):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(LATENCY)
        with self.lock:
            self.running -= 1
        return f"<page {url}>"

    def peak_concurrency(self):
        return self.peak


@aray.remote
class AsyncFetcher:
    def __init__(self):
        self.running = self.peak = 0  # one event loop: no lock needed

    async def fetch(self, url):
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(LATENCY)  # an asyncio client, e.g. aiohttp
        self.running -= 1
        return f"<page {url}>"

    async def peak_concurrency(self):
        return self.peak


async def run(label, fetcher):
    await fetcher.peak_concurrency.remote()  # the actor is up: do not time its start-up
    start = time.monotonic()
    pages = await asyncio.gather(*[fetcher.fetch.remote(f"/item/{i}") for i in range(CALLS)])
    elapsed = time.monotonic() - start
    assert pages == [f"<page /item/{i}>" for i in range(CALLS)]  # results keep call order
    peak = await fetcher.peak_concurrency.remote()
    print(f"{label:<44} {elapsed:5.2f} s, at most {peak:2d} at once")
    return elapsed


async def main():
    print(f"{CALLS} fetches of {LATENCY} s each:")
    sync_time = await run("sync actor", SyncFetcher.remote())
    await run("threaded actor, max_concurrency=4", ThreadedFetcher.remote())
    await run("async actor, max_concurrency=4 (rate limit)",
              AsyncFetcher.options(max_concurrency=4).remote())
    async_time = await run("async actor, default max_concurrency", AsyncFetcher.remote())
    print(f"the async actor was {sync_time / async_time:.0f}x faster than the sync one")


if __name__ == "__main__":
    aray.init(num_cpus=2)
    asyncio.run(main())
    aray.shutdown()
