"""An aiohttp web service that runs aray on its own event loop.

- aray starts and stops with the application: a `cleanup_ctx` generator awaits
  `aray.aio.init(num_cpus=2)` before its `yield` and `aray.aio.shutdown()` after it, and
  creates the actor the handlers share.
- `GET /square/{n}` awaits a task.
- `GET /hits` awaits a call of an actor that counts the requests (a middleware tells it of
  each one).
- `GET /countdown/{n}` streams a chunked response, one line per value of a streaming task,
  written as soon as the task yields it.
- Handlers never block: they `await` refs, so the loop serves other requests meanwhile.

The script serves the app on 127.0.0.1 on a free port (port 0, with `web.AppRunner` and
`web.TCPSite`), sends it a few requests with `aiohttp.ClientSession`, prints the answers,
and stops the server, which stops aray. To keep it serving instead, replace `main()` with
`web.run_app(make_app(), host="127.0.0.1", port=8080)`.

Run it with:

    python examples/aiohttp_service.py
"""

import asyncio
import time

from aiohttp import ClientSession, web

import aray


@aray.remote
def square(n):
    return n * n


@aray.remote(num_returns="streaming")
def countdown(n):
    for i in range(n, 0, -1):
        time.sleep(0.2)  # stands in for work that produces one result at a time
        yield i


@aray.remote
class HitCounter:
    def __init__(self):
        self.hits = {}

    def hit(self, path):
        self.hits[path] = self.hits.get(path, 0) + 1

    def counts(self):
        return self.hits


COUNTER = web.AppKey("counter", aray.ActorHandle)


async def aray_context(app):
    await aray.aio.init(num_cpus=2)  # on start-up, on the application's loop
    app[COUNTER] = HitCounter.remote()
    yield
    await aray.aio.shutdown()  # on clean-up


@web.middleware
async def count_hits(request, handler):
    # No need to wait for this call: the calls of one process reach the actor in order,
    # so a later counts() call sees it.
    request.app[COUNTER].hit.remote(request.path)
    return await handler(request)


async def handle_square(request):
    n = int(request.match_info["n"])
    return web.json_response({"n": n, "square": await square.remote(n)})


async def handle_hits(request):
    return web.json_response(await request.app[COUNTER].counts.remote())


async def handle_countdown(request):
    n = int(request.match_info["n"])
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    async for ref in countdown.remote(n):  # one ref per yielded value, as it is produced
        await response.write(f"{await ref}\n".encode())
    await response.write(b"liftoff\n")
    await response.write_eof()
    return response


def make_app():
    app = web.Application(middlewares=[count_hits])
    app.router.add_get("/square/{n}", handle_square)
    app.router.add_get("/hits", handle_hits)
    app.router.add_get("/countdown/{n}", handle_countdown)
    app.cleanup_ctx.append(aray_context)
    return app


async def main():
    runner = web.AppRunner(make_app())
    await runner.setup()  # runs the cleanup_ctx up to its yield: aray is up
    site = web.TCPSite(runner, "127.0.0.1", 0)  # port 0: any free port
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    print(f"serving on {base}")
    try:
        async with ClientSession() as session:
            # Three requests at once: the handlers await their tasks side by side.
            async def get_json(path):
                async with session.get(base + path) as response:
                    return path, await response.json()

            for path, answer in await asyncio.gather(*[get_json(f"/square/{n}")
                                                       for n in (3, 4, 12)]):
                print(f"GET {path} -> {answer}")

            start = time.monotonic()
            async with session.get(base + "/countdown/4") as response:
                print(f"GET /countdown/4 -> {response.headers['Transfer-Encoding']}:")
                async for line in response.content:  # lines arrive as they are written
                    print(f"  +{time.monotonic() - start:.1f} s  {line.decode().strip()}")

            path, answer = await get_json("/hits")
            print(f"GET {path} -> {answer}")
    finally:
        await runner.cleanup()  # stops the server, then the cleanup_ctx stops aray
    print("server and aray stopped")


if __name__ == "__main__":
    asyncio.run(main())
