"""The dashboard: an aiohttp app in the head's process that serves the pages in
``static/``, a JSON API over the head's views, ``/metrics`` and a websocket that pushes
updates to open pages. The JSON API's handlers and the checks of every parameter are in
:mod:`aray._head.views_api`; the login side is in :mod:`aray._head.login_pages`.

It runs on a loop of its own, in a thread (:class:`~aray._head.loop_thread.LoopThread`),
not on the loop that serves the cluster: a page of 100,000 tasks takes tens of
milliseconds to filter, sort and encode, and leases must not wait for it. What a page
needs of the head's tables it takes as a :class:`~aray._head.views.Snapshot`, made on the
head's loop (copying indexes, never rows); views that ask the nodes run on the head's
loop, which owns the links.

Everything but the static files and the login page needs the cluster token: an
``Authorization: Bearer TOKEN`` header (API clients, Prometheus), or the session cookie
that logging in sets. The cookie holds a random session id that the dashboard keeps for
SESSION_TTL seconds or until logging out, not the token; it is HttpOnly and
SameSite=Strict, so scripts and other sites cannot use it. An address that sends a wrong
token LOGIN_FAILURES times within LOGIN_WINDOW seconds is refused (429) for a while, and
every parameter is checked against its range (400) before anything is asked of a node.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import os
import sys
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from .._link import HANDSHAKE_TIMEOUT, MAX_UNAUTHENTICATED, GuardedServer
from .._packages import max_package_bytes
from .._periodic import RateLimitedLog
from . import job_api, views
from .login_pages import STATIC_DIR, LoginPages
from .logins import (  # noqa: F401  (LOGIN_FAILURES, ...: the limits are named here too)
    LOGIN_FAILURES,
    LOGIN_WINDOW,
    MAX_ADDRESSES,
    MAX_SESSIONS,
    SESSION_TTL,
    LoginLimiter,
    Sessions,
    TooManyLogins,
)
from .loop_thread import LoopThread, run_on
from .views_api import LOG_OFFSET, BadParam, ViewsApi, int_param, str_param

if TYPE_CHECKING:
    from .server import Head

log = logging.getLogger("aray.dashboard")

DEFAULT_PORT = 8265
#: a browser's idle keep-alive connection is closed after this many seconds
IDLE_TIMEOUT = 30.0
#: how often open pages get an update
PUSH_INTERVAL = 1.0
#: how often a followed log file is read for new output
TAIL_INTERVAL = 0.5
#: the most tasks an update's timeline holds (the most recent ones)
TIMELINE_ROWS = 1000
#: at most this long (in seconds) the dashboard's thread holds the GIL while the head's
#: loop waits for it (see Dashboard.start)
GIL_SWITCH_INTERVAL = 0.001
#: the websocket close code that tells a page it is not (or no longer) logged in
CLOSE_UNAUTHORIZED = 4401

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; "
                                "frame-ancestors 'none'; form-action 'self'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Dashboard(LoginPages):
    """The dashboard of one head. ``start()`` it on a host and port; ``aclose()`` it
    (both from the head's loop). Its app runs on a thread of its own.

    Example:
        >>> async def serve(head):
        ...     dashboard = Dashboard(head, token="secret")
        ...     url = await dashboard.start("127.0.0.1", 0)
        ...     await dashboard.aclose()
    """

    def __init__(self, head: Head, token: str) -> None:
        self.head = head
        self._thread = LoopThread("aray dashboard")
        self._head_loop: asyncio.AbstractEventLoop | None = None
        self._token = token.encode()
        self._sessions = Sessions()
        self._limiter = LoginLimiter()
        # a request may carry a runtime env package (read only once the guard let it in)
        self.app = web.Application(middlewares=[self._guard],
                                   client_max_size=max_package_bytes() + 2**20)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/login", self._login_form)
        self.app.router.add_post("/login", self._login)
        self.app.router.add_post("/logout", self._logout)
        self.app.router.add_get("/static/{name}", self._static)
        self.app.router.add_get("/ws", self._websocket)
        self.app.router.add_get("/metrics", self._metrics)
        # the JSON API's answers are built apart (views_api.py), from what is passed here
        ViewsApi(head, self._snapshot, self._on_head).add_routes(self.app.router)
        job_api.add_routes(self)
        self._runner: web.AppRunner | None = None
        self._web: GuardedServer | None = None
        self._listener: asyncio.Server | None = None
        self._refusals = RateLimitedLog(log)
        self._sockets: set[web.WebSocketResponse] = set()
        self.url = ""

    async def start(self, host: str, port: int | None) -> str:
        """Listen on ``host:port``; ``port=None``: the default port, or any free one if it
        is taken. Returns the dashboard's URL."""
        self._head_loop = asyncio.get_running_loop()
        # a thread that computes holds the GIL for up to the switch interval (5 ms by
        # default) before one that waits gets it: while a page is built, the head's loop
        # would wait that long at every turn. 1 ms keeps the wait short; threads that do
        # not contend for the GIL never notice.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL))
        self._thread.start()
        try:
            return await self._thread.run(self._serve(host, port))
        except BaseException:
            await self._thread.stop()
            raise

    async def _serve(self, host: str, port: int | None) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        app_server = self._runner.server
        assert app_server is not None
        # the app's handler behind the link servers' guard: a connection must bring a whole
        # request within the deadline (no slowloris), and few may be waiting to
        self._web = GuardedServer(
            app_server.request_handler, request_factory=app_server.request_factory,
            limit=MAX_UNAUTHENTICATED, deadline=HANDSHAKE_TIMEOUT,
            refused=lambda reason: self._refusals(logging.WARNING, "the dashboard refused a "
                                                  "connection: %s", reason),
            access_log=None, keepalive_timeout=IDLE_TIMEOUT)
        loop = asyncio.get_running_loop()
        for attempt in ([DEFAULT_PORT, 0] if port is None else [port]):
            try:
                self._listener = await loop.create_server(self._web, host, attempt,
                                                          reuse_address=True)
                break
            except OSError as exc:
                in_use = exc.errno == errno.EADDRINUSE
                if in_use and port is None and attempt != 0:
                    continue
                await self._runner.cleanup()
                advice = ("Pick another port (--dashboard-port, or dashboard_port= in "
                          "aray.init), or turn the dashboard off." if in_use else
                          "Check the dashboard host (--dashboard-host, or dashboard_host= in "
                          "aray.init): an address or name of this machine.")
                raise OSError(exc.errno, f"the dashboard cannot listen on {host}:{attempt}: "
                              f"{exc.strerror}. {advice}") from None
        # a failed attempt goes on only to a next one (the last raises): here it listens
        assert self._listener is not None
        bound = self._listener.sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        return self.url

    async def aclose(self) -> None:
        """Close every connection and stop the dashboard's thread."""
        if self._thread.running:
            await self._thread.run(self._close())
        await self._thread.stop()

    async def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for ws in list(self._sockets):
            await ws.close()
        if self._web is not None:
            self._web.pre_shutdown()
            await self._web.shutdown(2.0)
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        if self._web is not None and request.transport is not None:
            self._web.trust(request.transport)  # a whole request came: no deadline now
        try:
            response = await self._checked(request, handler)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        if not response.prepared:  # a websocket has sent its headers already
            response.headers.update(SECURITY_HEADERS)
        return response

    async def _checked(self, request: web.Request, handler) -> web.StreamResponse:
        """The handler's answer; or 401 for a stranger, 429 for an address that sent wrong
        tokens too often, 400 for a parameter out of its range."""
        # the pages check for themselves (a login page for strangers); so does the
        # websocket, which closes with CLOSE_UNAUTHORIZED so that the page knows why
        public = (request.path in ("/", "/login", "/ws")
                  or request.path.startswith("/static/"))
        try:
            if public or self._authorized(request):
                return await handler(request)
            return web.json_response(
                {"error": "this needs the cluster token: log in at / or send "
                          "'Authorization: Bearer TOKEN'"}, status=401,
                headers={"WWW-Authenticate": 'Bearer realm="aray"'})
        except BadParam as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except TooManyLogins as exc:
            wait = math.ceil(exc.retry_after)
            error = f"too many wrong tokens from {request.remote}: try again in {wait} s"
            headers = {"Retry-After": str(wait)}
            if request.path in ("/", "/login"):
                return self._login_page(error[0].upper() + error[1:] + ".", 429, headers)
            return web.json_response({"error": error}, status=429, headers=headers)

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("app.js", "style.css"):
            raise web.HTTPNotFound()
        return web.FileResponse(os.path.join(STATIC_DIR, name))

    # --- what the head's loop gives -----------------------------------------------------
    async def _on_head(self, coro):
        """Await ``coro`` on the head's loop (views that ask the nodes over its links)."""
        return await run_on(self._head_loop, coro)

    async def _snapshot(self, task_rows: bool = False) -> views.Snapshot:
        """The head's tables as they are now, taken on the head's loop (``task_rows``: for
        views that list tasks)."""
        return await self._on_head(self._take_snapshot(task_rows))

    async def _take_snapshot(self, task_rows: bool) -> views.Snapshot:
        return views.Snapshot(self.head, task_rows)

    async def _metrics(self, request: web.Request) -> web.Response:
        from .metrics import CONTENT_TYPE, render

        return web.Response(body=render(await self._snapshot()),
                            headers={"Content-Type": CONTENT_TYPE})

    # --- live updates --------------------------------------------------------------------
    async def _update(self) -> dict:
        snapshot = await self._snapshot(task_rows=True)  # for the timeline
        return {"type": "update", "summary": views.summary(snapshot),
                "nodes": views.nodes(snapshot),
                "timeline": views.timeline(snapshot, max_rows=TIMELINE_ROWS)}

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            # a page of another site may open websockets here: it gets nothing
            return web.json_response({"error": "cross-origin websocket refused"}, status=403)
        who = self._who(request)  # before the handshake, so that 429 is an HTTP answer
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        if who is None:
            await ws.close(code=CLOSE_UNAUTHORIZED, message=b"log in first")
            return ws
        self._sockets.add(ws)
        pusher = asyncio.ensure_future(self._push(ws, who))
        tail: asyncio.Task | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    command = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(command, dict) or command.get("type") not in ("tail",
                                                                                "untail"):
                    continue
                if tail is not None:
                    tail.cancel()
                    tail = None
                if command["type"] == "tail":
                    try:  # checked here: nothing out of range goes to a node
                        node_id, file = str_param(command, "node_id"), str_param(command, "file")
                        offset = int_param(command, "offset", 0, LOG_OFFSET)
                    except BadParam as exc:
                        await ws.send_json({"type": "error", "error": str(exc)})
                        continue
                    tail = asyncio.ensure_future(self._tail(ws, node_id, file, offset))
        finally:
            self._sockets.discard(ws)
            pusher.cancel()
            if tail is not None:
                tail.cancel()
        return ws

    async def _push(self, ws: web.WebSocketResponse, session: str) -> None:
        """Send updates while the socket is open and, if a cookie opened it, its session
        lives: logging out (or the session expiring) closes the socket too."""
        while not ws.closed:
            if session and not self._sessions.valid(session):
                await ws.close(code=CLOSE_UNAUTHORIZED, message=b"logged out")
                return
            await ws.send_json(await self._update())
            await asyncio.sleep(PUSH_INTERVAL)

    async def _tail(self, ws: web.WebSocketResponse, node_id: str, file: str,
                    offset: int) -> None:
        """Follow a log file: send what it gains, as it gains it."""
        while not ws.closed:
            try:
                chunk = await self._on_head(views.read_log(self.head, node_id, file, offset, 0))
            except (TimeoutError, LookupError, ConnectionError) as exc:
                await ws.send_json({"type": "log", "node_id": node_id, "file": file,
                                    "data": "", "offset": offset, "error": str(exc)})
                return
            if chunk["data"] or offset < 0:
                await ws.send_json({"type": "log", "node_id": node_id, "file": file,
                                    "data": chunk["data"], "offset": chunk["offset"]})
            offset = chunk["offset"]
            if chunk["offset"] >= chunk["size"]:  # caught up: wait for more
                await asyncio.sleep(TAIL_INTERVAL)
