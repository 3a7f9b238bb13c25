"""The dashboard: an aiohttp app in the head's process that serves the pages in
``static/``, a JSON API over the head's views, ``/metrics`` and a websocket that pushes
updates to open pages.

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
import hmac
import html
import json
import logging
import math
import os
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from .._link import HANDSHAKE_TIMEOUT, MAX_UNAUTHENTICATED, GuardedServer
from .._periodic import RateLimitedLog
from ..node.logs import MAX_OFFSET, MAX_READ
from . import views

if TYPE_CHECKING:
    from .server import Head

log = logging.getLogger("aray.dashboard")

DEFAULT_PORT = 8265
#: a browser's idle keep-alive connection is closed after this many seconds
IDLE_TIMEOUT = 30.0
COOKIE = "aray_session"
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
#: how often open pages get an update
PUSH_INTERVAL = 1.0
#: how often a followed log file is read for new output
TAIL_INTERVAL = 0.5
#: the most tasks an update's timeline holds (the most recent ones)
TIMELINE_ROWS = 1000
#: the websocket close code that tells a page it is not (or no longer) logged in
CLOSE_UNAUTHORIZED = 4401

#: how long a login lasts, in seconds
SESSION_TTL = 12 * 3600.0
#: the most sessions kept at once: a login past this many ends the oldest session
MAX_SESSIONS = 1000
#: wrong tokens one client address may send within LOGIN_WINDOW seconds; then it must wait
LOGIN_FAILURES = 10
LOGIN_WINDOW = 60.0
#: the most client addresses whose failed logins are remembered
MAX_ADDRESSES = 10_000

# The range of every integer parameter, both ends included. Pages: offsets up to 10**9
# rows, at most MAX_PAGE a page. Logs: the offsets and lengths a node reads (a negative
# offset counts from the end; limit 0 means MAX_READ). Timeline: up to a day.
PAGE_OFFSET = (0, 10**9)
PAGE_LIMIT = (0, views.MAX_PAGE)
LOG_OFFSET = (-MAX_OFFSET, MAX_OFFSET)
LOG_LIMIT = (0, MAX_READ)
TIMELINE_SECONDS = (1, 86400)
#: the longest string parameter (state, name, job_id, node_id, file)
MAX_STRING = 256

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; "
                                "frame-ancestors 'none'; form-action 'self'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aray dashboard: log in</title><link rel="stylesheet" href="/static/style.css"></head>
<body class="login"><main class="login-box">
<h1>aray dashboard</h1>
<p>Log in with the cluster's token. <code>aray dashboard</code> prints a link that logs in at
once; the token is also in the session's <code>token</code> file.</p>
{error}
<form method="post" action="/login">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Log in</button>
</form></main></body></html>
"""


def _redirect(to: str) -> web.Response:
    return web.Response(status=303, headers={"Location": to})


class BadParam(ValueError):
    """A parameter out of its range; the dashboard answers 400 (or, on the websocket, an
    error message) with this text, which names the parameter and its range."""


#: an integer as a query string spells it: no sign but '-', no spaces, no '_', no exponent
_INTEGER = re.compile(r"-?[0-9]{1,20}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def int_param(source: Mapping, name: str, default: int, bounds: tuple[int, int]) -> int:
    """``source[name]`` (a query's string, or a number of a websocket command) as an integer
    within ``bounds``; ``default`` when it is missing or empty. Raises BadParam otherwise:
    for junk, floats, booleans and anything out of range."""
    value = source.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    low, high = bounds
    if type(value) is int and low <= value <= high:  # type(): True is an int, not a number
        return value
    raise BadParam(f"{name} must be an integer from {low} to {high}, not {_shown(value)}")


def str_param(source: Mapping, name: str) -> str:
    """``source[name]`` as a string of at most MAX_STRING characters, ``""`` when missing;
    raises BadParam for anything else."""
    value = source.get(name, "")
    if isinstance(value, str) and len(value) <= MAX_STRING:
        return value
    raise BadParam(f"{name} must be a string of at most {MAX_STRING} characters, "
                   f"not {_shown(value)}")


def _window(query: Mapping) -> tuple[int, int]:
    """The ``offset`` and ``limit`` of a page of rows."""
    return int_param(query, "offset", 0, PAGE_OFFSET), int_param(query, "limit", 100, PAGE_LIMIT)


class Sessions:
    """Logged-in browsers: random session ids, each with its expiry, at most ``limit`` at
    once (a new one past that ends the oldest). No I/O: ``clock`` tells the time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = SESSION_TTL,
                 limit: int = MAX_SESSIONS) -> None:
        self._clock, self.ttl, self._limit = clock, ttl, limit
        self._expiry: OrderedDict[str, float] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._expiry)

    def create(self) -> str:
        """A new session, valid for ``ttl`` seconds; returns its id (256 random bits)."""
        now = self._clock()
        # every session lives as long, so the expired ones are the oldest, at the front
        while self._expiry and next(iter(self._expiry.values())) <= now:
            self._expiry.popitem(last=False)
        session = secrets.token_urlsafe(32)
        self._expiry[session] = now + self.ttl
        while len(self._expiry) > self._limit:
            self._expiry.popitem(last=False)
        return session

    def valid(self, session: str) -> bool:
        """Whether ``session`` is the id of a live session."""
        # a dict lookup of the exact string, not a constant-time compare: the ids are 256
        # random bits, so whatever the lookup's timing tells brings no guess closer
        expiry = self._expiry.get(session)
        if expiry is not None and self._clock() >= expiry:
            del self._expiry[session]
            return False
        return expiry is not None

    def revoke(self, session: str) -> None:
        """End a session (logging out); unknown ids are ignored."""
        self._expiry.pop(session, None)


class TooManyLogins(Exception):
    """An address that failed to log in too often tried again; it may in ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class LoginLimiter:
    """Failed logins per client address, in a sliding window: an address with
    ``max_failures`` failures in the last ``window`` seconds must wait until the oldest of
    them is that old. At most ``max_addresses`` addresses are remembered (the one that failed
    longest ago is forgotten first), so a spray of addresses cannot grow the table. A right
    token does not clear the count: other clients behind the same address (all of loopback)
    would clear it for a guesser. No I/O: ``clock`` tells the time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self._clock, self._max, self._window = clock, max_failures, window
        self._max_addresses = max_addresses
        # address -> the times of its last max_failures failures; least recently failed first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may now."""
        times = self._failures.get(address)
        if times is None or len(times) < self._max:
            return 0.0
        return max(0.0, times[0] + self._window - self._clock())

    def failed(self, address: str) -> None:
        """Count a failed login from ``address``."""
        now = self._clock()
        times = self._failures.pop(address, None) or deque(maxlen=self._max)
        times.append(now)
        # addresses whose last failure is out of the window count for nothing any more
        while self._failures and next(iter(self._failures.values()))[-1] <= now - self._window:
            self._failures.popitem(last=False)
        self._failures[address] = times
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)


class Dashboard:
    """The dashboard of one head. ``start()`` it on a host and port; ``aclose()`` it."""

    def __init__(self, head: Head, token: str) -> None:
        self.head = head
        self._token = token.encode()
        self._sessions = Sessions()
        self._limiter = LoginLimiter()
        self.app = web.Application(middlewares=[self._guard])
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/login", self._login_form)
        self.app.router.add_post("/login", self._login)
        self.app.router.add_post("/logout", self._logout)
        self.app.router.add_get("/static/{name}", self._static)
        self.app.router.add_get("/ws", self._websocket)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/api/summary", self._api_summary)
        self.app.router.add_get("/api/nodes", self._api_nodes)
        self.app.router.add_get("/api/tasks", self._api_tasks)
        self.app.router.add_get("/api/actors", self._api_actors)
        self.app.router.add_get("/api/objects", self._api_objects)
        self.app.router.add_get("/api/jobs", self._api_jobs)
        self.app.router.add_get("/api/timeline", self._api_timeline)
        self.app.router.add_get("/api/logs", self._api_logs)
        self.app.router.add_get("/api/logs/{node_id}/{file}", self._api_log)
        self._runner: web.AppRunner | None = None
        self._web: GuardedServer | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._refusals = RateLimitedLog(log)
        self._sockets: set[web.WebSocketResponse] = set()
        self.url = ""

    async def start(self, host: str, port: int | None) -> str:
        """Listen on ``host:port``; ``port=None``: the default port, or any free one if it
        is taken. Returns the dashboard's URL."""
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
        bound = self._listener.sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        return self.url

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for ws in list(self._sockets):
            await ws.close()
        if self._web is not None:
            self._web.pre_shutdown()
            await self._web.shutdown(2.0)
        if self._runner is not None:
            await self._runner.cleanup()

    # --- who may see what ----------------------------------------------------------------
    def _token_ok(self, request: web.Request, token: str) -> bool:
        """Whether ``token`` is the cluster's; a wrong one counts against the client's
        address. Raises TooManyLogins, whatever the token, while that address must wait."""
        address = request.remote or ""
        wait = self._limiter.retry_after(address)
        if wait > 0:
            raise TooManyLogins(wait)
        # headers with bytes that are not UTF-8 come as surrogates: compare, never raise
        if hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self._token):
            return True
        self._limiter.failed(address)
        return False

    def _session_of(self, request: web.Request) -> str:
        """The id of the live session the request's cookie names, or ``""``."""
        session = request.cookies.get(COOKIE, "")
        return session if session and self._sessions.valid(session) else ""

    def _who(self, request: web.Request) -> str | None:
        """None for a stranger; ``""`` for the holder of a bearer token; else the id of the
        session its cookie names."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return "" if self._token_ok(request, auth[7:].strip()) else None
        return self._session_of(request) or None

    def _authorized(self, request: web.Request) -> bool:
        """Whether the request holds the token or a live session (see _who)."""
        return self._who(request) is not None

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

    def _login_page(self, error: str = "", status: int = 401,
                    headers: dict | None = None) -> web.Response:
        shown = f'<p class="error">{html.escape(error)}</p>' if error else ""
        return web.Response(text=LOGIN_PAGE.format(error=shown), status=status,
                            content_type="text/html", headers=headers)

    def _logged_in(self) -> web.Response:
        """A redirect to the dashboard that sets the cookie of a new session."""
        response = _redirect("/")
        response.set_cookie(COOKIE, self._sessions.create(), httponly=True, samesite="Strict",
                            path="/", max_age=int(self._sessions.ttl))
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token is not None:  # a login link: trade the token for the cookie, and drop it
            if self._token_ok(request, token):
                return self._logged_in()
            return self._login_page("The token in that link is not the token of this cluster.")
        if not self._authorized(request):
            return self._login_page()
        return web.FileResponse(os.path.join(STATIC_DIR, "index.html"))

    async def _login_form(self, request: web.Request) -> web.Response:
        if self._authorized(request):
            return _redirect("/")
        return self._login_page(status=200)

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        if self._token_ok(request, token):
            return self._logged_in()
        return self._login_page("Wrong token: that is not the token of this cluster.")

    async def _logout(self, request: web.Request) -> web.Response:
        # the session ends here, not only in this browser: a copy of the cookie is refused
        self._sessions.revoke(request.cookies.get(COOKIE, ""))
        response = _redirect("/")
        response.del_cookie(COOKIE, path="/")
        return response

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("app.js", "style.css"):
            raise web.HTTPNotFound()
        return web.FileResponse(os.path.join(STATIC_DIR, name))

    # --- the JSON API --------------------------------------------------------------------
    async def _api_summary(self, request: web.Request) -> web.Response:
        return web.json_response(views.summary(self.head))

    async def _api_nodes(self, request: web.Request) -> web.Response:
        rows = views.nodes(self.head)
        return web.json_response(views.page(rows, 0, len(rows), len(rows)))

    async def _api_tasks(self, request: web.Request) -> web.Response:
        q = request.query
        offset, limit = _window(q)
        return web.json_response(views.tasks(
            self.head, state=str_param(q, "state"), name=str_param(q, "name"),
            job_id=str_param(q, "job_id"), offset=offset, limit=limit))

    async def _api_actors(self, request: web.Request) -> web.Response:
        offset, limit = _window(request.query)
        return web.json_response(views.actors(
            self.head, state=str_param(request.query, "state"), offset=offset, limit=limit))

    async def _api_objects(self, request: web.Request) -> web.Response:
        offset, limit = _window(request.query)  # checked before the nodes are asked
        rows = sorted(await views.objects(self.head), key=lambda o: -o["size"])
        body = views.page_of(rows, offset, limit)
        body["total_bytes"] = sum(o["size"] for o in rows)
        return web.json_response(body)

    async def _api_jobs(self, request: web.Request) -> web.Response:
        rows = list(reversed(views.jobs(self.head)))
        return web.json_response(views.page(rows, 0, len(rows), len(rows)))

    async def _api_timeline(self, request: web.Request) -> web.Response:
        seconds = int_param(request.query, "seconds", 60, TIMELINE_SECONDS)
        return web.json_response(views.timeline(self.head, seconds))

    async def _api_logs(self, request: web.Request) -> web.Response:
        return web.json_response({"rows": await views.log_files(self.head)})

    async def _api_log(self, request: web.Request) -> web.Response:
        where, q = request.match_info, request.query
        node_id, file = str_param(where, "node_id"), str_param(where, "file")
        offset, limit = int_param(q, "offset", 0, LOG_OFFSET), int_param(q, "limit", 0, LOG_LIMIT)
        try:
            body = await views.read_log(self.head, node_id, file, offset, limit)
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except (TimeoutError, ConnectionError):
            return web.json_response({"error": f"node {node_id} did not answer"}, status=504)
        return web.json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        from .metrics import CONTENT_TYPE, render

        return web.Response(body=render(self.head), headers={"Content-Type": CONTENT_TYPE})

    # --- live updates --------------------------------------------------------------------
    def _update(self) -> dict:
        return {"type": "update", "summary": views.summary(self.head),
                "nodes": views.nodes(self.head),
                "timeline": views.timeline(self.head, max_rows=TIMELINE_ROWS)}

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
            await ws.send_json(self._update())
            await asyncio.sleep(PUSH_INTERVAL)

    async def _tail(self, ws: web.WebSocketResponse, node_id: str, file: str,
                    offset: int) -> None:
        """Follow a log file: send what it gains, as it gains it."""
        while not ws.closed:
            try:
                chunk = await views.read_log(self.head, node_id, file, offset, 0)
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
