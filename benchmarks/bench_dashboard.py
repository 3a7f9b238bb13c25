"""Dashboard benchmark: how long its API and its live updates take with a full task table.

    python benchmarks/bench_dashboard.py [--tasks 100000]

Runs ``--tasks`` tiny tasks (the head keeps the last 100,000 that ended), waits until the
head has heard of them all, then times, over 20 requests each (best and median), the
JSON API calls the pages make: a page of 50 tasks (all, by state, by name), the summary,
the timeline and the nodes; the size of the update the websocket pushes every second; and
the round trip of a task that needs a new lease (median of 60), with the dashboard idle and
while it builds the biggest page again and again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import threading
import time
import urllib.request

import aiohttp
from compare import cpu_model  # benchmarks/ is on sys.path when this script runs

import aray
from aray import _global
from aray.util.state import summarize_tasks


@aray.remote
def tiny(i):
    return i


async def timed(session, url: str, headers: dict, rounds: int = 20) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        async with session.get(url, headers=headers) as r:
            assert r.status == 200, await r.text()
            await r.read()
        times.append(time.perf_counter() - start)
    return times


async def update_sizes(url: str, headers: dict, rounds: int = 5) -> list[int]:
    """The sizes of the updates the websocket pushes."""
    async with aiohttp.ClientSession() as s, s.ws_connect(url + "/ws", headers=headers) as ws:
        sizes = []
        for _ in range(rounds):
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT
            sizes.append(len(msg.data))
        return sizes


async def measure(url: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    paths = ["/api/tasks?limit=50", "/api/tasks?state=FINISHED&limit=50&offset=50000",
             "/api/tasks?name=tiny&limit=50", "/api/summary", "/api/timeline",
             "/api/nodes"]
    async with aiohttp.ClientSession() as s:
        for path in paths:
            times = await timed(s, url + path, headers)
            print(f"  {path:<52} best {min(times) * 1e3:7.1f} ms   median "
                  f"{statistics.median(times) * 1e3:7.1f} ms")
    sizes = await update_sizes(url, headers)
    print(f"  websocket update: {max(sizes) / 1024:.0f} KiB of JSON each second")


def lease_round_trips(n: int = 60) -> list[float]:
    times = []
    for _ in range(n):
        time.sleep(0.02)  # longer than a lease lingers: every task asks for a new lease
        start = time.perf_counter()
        aray.get(tiny.remote(0))
        times.append(time.perf_counter() - start)
    return times


def lease_latency(url: str, token: str) -> None:
    """Tasks' round trips, quiet and while pages of the full table are built."""
    quiet = lease_round_trips()
    stop, pages = threading.Event(), []
    request = urllib.request.Request(url + "/api/tasks?state=FINISHED&limit=50&offset=50000",
                                     headers={"Authorization": f"Bearer {token}"})

    def pages_again_and_again():
        while not stop.is_set():
            urllib.request.urlopen(request).read()
            pages.append(1)

    pager = threading.Thread(target=pages_again_and_again)
    pager.start()
    try:
        busy = lease_round_trips()
    finally:
        stop.set()
        pager.join()
    print(f"  a task with a new lease: median {statistics.median(quiet) * 1e3:.1f} ms idle, "
          f"{statistics.median(busy) * 1e3:.1f} ms while {len(pages)} pages were built")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    print(f"bench_dashboard: {cpu_model()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    info = aray.init(num_cpus=2, dashboard_port=0)
    try:
        start = time.perf_counter()
        for first in range(0, args.tasks, 10_000):
            aray.get([tiny.remote(i) for i in range(first, min(first + 10_000, args.tasks))])
        print(f"{args.tasks:,} tasks in {time.perf_counter() - start:.1f} s")
        while summarize_tasks().get("tiny", {}).get("FINISHED", 0) < min(args.tasks, 100_000):
            time.sleep(0.2)
        print("with the head's task table full:")
        asyncio.run(measure(info["dashboard_url"], _global.core().token))
        lease_latency(info["dashboard_url"], _global.core().token)
    finally:
        aray.shutdown()


if __name__ == "__main__":
    main()
