"""What one synchronous round trip costs on this machine, hop by hop: the floor under
``aray.get(f.remote())``.

    python benchmarks/bench_hops.py [--n 5000] [--rounds 3] [--quick] [--json PATH]

Each row sends a tiny message from this process to another and waits for the answer, ``--n``
times, and reports round trips per second (best of ``--rounds``):

* ``process pool``: ``ProcessPoolExecutor(1).submit(f).result()``, the floor the task
  rows of compare.py are held to;
* ``pipe``: a blocking ``multiprocessing.Pipe`` echo, no thread and no event loop;
* ``websocket, loop to loop``: an aiohttp websocket on a unix socket, each end an asyncio
  loop (what aray's processes speak);
* ``+ caller thread``: the caller's own thread hands each call to a loop thread and blocks
  on a future for the answer, as a sync ``aray.get`` does;
* ``+ worker thread``: the other end runs each message on a thread of its own and hands the
  answer back to its loop, as an aray worker runs a plain task (so that the task can block,
  call ``aray.get`` and be cancelled while the loop stays free);
* ``aray tasks sync``: ``aray.get(f.remote())`` on a 1-CPU local cluster.

The last two rows have the same hops; their difference is what aray's own code costs per
task. ``--quick``: 500 round trips, 1 round.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import platform
import queue
import sys
import tempfile
import threading
import time

from compare import cpu_model  # benchmarks/ is on sys.path when this script runs


def _noop() -> bytes:
    return b"ok"


def _pipe_echo(conn) -> None:
    while True:
        msg = conn.recv_bytes()
        if msg == b"stop":
            return
        conn.send_bytes(msg)


def _ws_server(path: str, threaded: bool, ready) -> None:
    """An aiohttp websocket echo on ``path``; ``threaded``: each message is answered from a
    thread of its own, handed back to the loop."""
    from aiohttp import web

    async def main() -> None:
        loop = asyncio.get_running_loop()
        work: queue.SimpleQueue = queue.SimpleQueue()
        stop = loop.create_future()

        def serve_on_thread() -> None:
            while True:
                ws, data = work.get()
                loop.call_soon_threadsafe(lambda ws=ws, data=data: loop.create_task(
                    ws.send_bytes(data)))

        if threaded:
            threading.Thread(target=serve_on_thread, daemon=True).start()

        async def handler(request):
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for frame in ws:
                if frame.data == b"stop":
                    stop.set_result(None)
                    break
                if threaded:
                    work.put((ws, frame.data))
                else:
                    await ws.send_bytes(frame.data)
            return ws

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        ready.set()
        await stop
        await runner.cleanup()

    asyncio.run(main())


class _WsClient:
    """A websocket client on a loop thread of its own; :meth:`call` blocks this thread."""

    def __init__(self, path: str) -> None:
        import aiohttp

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def connect():
            self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path))
            self.ws = await self.session.ws_connect("http://localhost/")

        asyncio.run_coroutine_threadsafe(connect(), self.loop).result(10)

    async def round_trip(self, data: bytes) -> bytes:
        await self.ws.send_bytes(data)
        return (await self.ws.receive()).data

    async def round_trips(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await self.round_trip(b"x" * 64)
        return time.perf_counter() - start

    def call(self, data: bytes) -> bytes:
        return asyncio.run_coroutine_threadsafe(self.round_trip(data), self.loop).result(10)

    def close(self) -> None:
        async def close():
            await self.ws.send_bytes(b"stop")
            await self.ws.close()
            await self.session.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def timed(fn, n: int, rounds: int) -> float:
    """Round trips per second, best of ``rounds`` runs of ``fn(n)`` (which returns seconds
    or None, then timed here)."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        took = fn(n)
        took = took if took is not None else time.perf_counter() - start
        best = max(best, n / took)
    return best


def pool_row(n: int, rounds: int) -> float:
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        pool.submit(_noop).result()
        return timed(lambda k: [pool.submit(_noop).result() for _ in range(k)] and None,
                     n, rounds)


def pipe_row(n: int, rounds: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_pipe_echo, args=(there,))
    proc.start()

    def run(k: int) -> None:
        for _ in range(k):
            here.send_bytes(b"x" * 64)
            here.recv_bytes()

    try:
        return timed(run, n, rounds)
    finally:
        here.send_bytes(b"stop")
        proc.join(10)


def ws_rows(n: int, rounds: int, threaded: bool, folder: str) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    path = os.path.join(folder, f"echo-{int(threaded)}.sock")
    ready = ctx.Event()
    proc = ctx.Process(target=_ws_server, args=(path, threaded, ready))
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the websocket echo server did not start")
        client = _WsClient(path)
        try:
            client.call(b"warm")
            rows = {}
            if not threaded:
                rows["websocket, loop to loop"] = timed(
                    lambda k: asyncio.run_coroutine_threadsafe(
                        client.round_trips(k), client.loop).result(600), n, rounds)
            name = "+ caller thread, + worker thread" if threaded else "+ caller thread"
            rows[name] = timed(lambda k: [client.call(b"x" * 64) for _ in range(k)] and None,
                               n, rounds)
            return rows
        finally:
            client.close()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def aray_row(n: int, rounds: int) -> float:
    import aray

    aray.init(num_cpus=1, include_dashboard=False)
    try:
        f = aray.remote(_noop)
        aray.get(f.remote())
        return timed(lambda k: [aray.get(f.remote()) for _ in range(k)] and None, n, rounds)
    finally:
        aray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="round trips per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500 round trips, 1 round")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    n, rounds = (500, 1) if args.quick else (args.n, args.rounds)
    print(f"round trips per second, best of {rounds} x {n}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="aray-hops-") as folder:
        rows["process pool"] = pool_row(n, rounds)
        rows["pipe"] = pipe_row(n, rounds)
        rows.update(ws_rows(n, rounds, False, folder))
        rows.update(ws_rows(n, rounds, True, folder))
    rows["aray tasks sync"] = aray_row(n, rounds)
    pool = rows["process pool"]
    print(f"{'':34} {'per s':>8} {'vs pool':>8}")
    for name, rate in rows.items():
        print(f"{name:34} {rate:8,.0f} {rate / pool:8.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"n": n, "rounds": rounds, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    sys.exit(main())
