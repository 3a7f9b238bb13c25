"""The dashboard: an aiohttp app in the head's process that serves the pages in
``static/``, a JSON API over the head's views, ``/metrics`` and a websocket that pushes
updates to open pages.

Everything but the static files and the login page needs the cluster token: an
``Authorization: Bearer TOKEN`` header (API clients, Prometheus), or the session cookie
that logging in sets. The cookie holds a value derived from the token, not the token, and
is HttpOnly and SameSite=Strict, so scripts and other sites cannot use it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import html
import json
import logging
import os
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from . import views

if TYPE_CHECKING:
    from .server import Head

log = logging.getLogger("aray.dashboard")

DEFAULT_PORT = 8265
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


def _int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be an integer, "
                                                  f"not {value!r}"}),
                                 content_type="application/json") from None


class Dashboard:
    """The dashboard of one head. ``start()`` it on a host and port; ``aclose()`` it."""

    def __init__(self, head: Head, token: str) -> None:
        self.head = head
        self._token = token.encode()
        # what the cookie holds: proof of the token, but not the token
        self._session = hmac.new(self._token, b"aray dashboard session",
                                 hashlib.sha256).hexdigest()
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
        self._sockets: set[web.WebSocketResponse] = set()
        self.url = ""

    async def start(self, host: str, port: int | None) -> str:
        """Listen on ``host:port``; ``port=None``: the default port, or any free one if it
        is taken. Returns the dashboard's URL."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        for attempt in ([DEFAULT_PORT, 0] if port is None else [port]):
            site = web.TCPSite(self._runner, host, attempt, reuse_address=True)
            try:
                await site.start()
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
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        return self.url

    async def aclose(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- who may see what ----------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return hmac.compare_digest(auth[7:].strip().encode(), self._token)
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._session.encode())

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        # the pages check for themselves (a login page for strangers); so does the
        # websocket, which closes with CLOSE_UNAUTHORIZED so that the page knows why
        public = (request.path in ("/", "/login", "/ws")
                  or request.path.startswith("/static/"))
        if not public and not self._authorized(request):
            response = web.json_response(
                {"error": "this needs the cluster token: log in at / or send "
                          "'Authorization: Bearer TOKEN'"}, status=401,
                headers={"WWW-Authenticate": 'Bearer realm="aray"'})
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                exc.headers.update(SECURITY_HEADERS)
                raise
        if not response.prepared:  # a websocket has sent its headers already
            response.headers.update(SECURITY_HEADERS)
        return response

    def _login_page(self, error: str = "", status: int = 401) -> web.Response:
        shown = f'<p class="error">{html.escape(error)}</p>' if error else ""
        return web.Response(text=LOGIN_PAGE.format(error=shown), status=status,
                            content_type="text/html")

    def _logged_in(self) -> web.Response:
        """A redirect to the dashboard that sets the session cookie."""
        response = _redirect("/")
        response.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", path="/")
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token is not None:  # a login link: trade the token for the cookie, and drop it
            if hmac.compare_digest(token.encode(), self._token):
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
        if token and hmac.compare_digest(token.encode(), self._token):
            return self._logged_in()
        return self._login_page("Wrong token: that is not the token of this cluster.")

    async def _logout(self, request: web.Request) -> web.Response:
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
        return web.json_response(views.tasks(
            self.head, state=q.get("state", ""), name=q.get("name", ""),
            job_id=q.get("job_id", ""), offset=_int(request, "offset", 0),
            limit=_int(request, "limit", 100)))

    async def _api_actors(self, request: web.Request) -> web.Response:
        return web.json_response(views.actors(
            self.head, state=request.query.get("state", ""),
            offset=_int(request, "offset", 0), limit=_int(request, "limit", 100)))

    async def _api_objects(self, request: web.Request) -> web.Response:
        rows = sorted(await views.objects(self.head), key=lambda o: -o["size"])
        body = views.page_of(rows, _int(request, "offset", 0), _int(request, "limit", 100))
        body["total_bytes"] = sum(o["size"] for o in rows)
        return web.json_response(body)

    async def _api_jobs(self, request: web.Request) -> web.Response:
        rows = list(reversed(views.jobs(self.head)))
        return web.json_response(views.page(rows, 0, len(rows), len(rows)))

    async def _api_timeline(self, request: web.Request) -> web.Response:
        return web.json_response(views.timeline(self.head, _int(request, "seconds", 60)))

    async def _api_logs(self, request: web.Request) -> web.Response:
        return web.json_response({"rows": await views.log_files(self.head)})

    async def _api_log(self, request: web.Request) -> web.Response:
        try:
            body = await views.read_log(self.head, request.match_info["node_id"],
                                        request.match_info["file"],
                                        _int(request, "offset", 0), _int(request, "limit", 0))
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=404)
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
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        if not self._authorized(request):
            await ws.close(code=CLOSE_UNAUTHORIZED, message=b"log in first")
            return ws
        self._sockets.add(ws)
        pusher = asyncio.ensure_future(self._push(ws))
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
                offset = command.get("offset") or 0
                if command["type"] == "tail" and isinstance(offset, int):
                    tail = asyncio.ensure_future(self._tail(
                        ws, str(command.get("node_id", "")), str(command.get("file", "")),
                        offset))
        finally:
            self._sockets.discard(ws)
            pusher.cancel()
            if tail is not None:
                tail.cancel()
        return ws

    async def _push(self, ws: web.WebSocketResponse) -> None:
        while not ws.closed:
            await ws.send_json(self._update())
            await asyncio.sleep(PUSH_INTERVAL)

    async def _tail(self, ws: web.WebSocketResponse, node_id: str, file: str,
                    offset: int) -> None:
        """Follow a log file: send what it gains, as it gains it."""
        while not ws.closed:
            try:
                chunk = await views.read_log(self.head, node_id, file, offset, 0)
            except (LookupError, asyncio.TimeoutError, ConnectionError) as exc:
                await ws.send_json({"type": "log", "node_id": node_id, "file": file,
                                    "data": "", "offset": offset, "error": str(exc)})
                return
            if chunk["data"] or offset < 0:
                await ws.send_json({"type": "log", "node_id": node_id, "file": file,
                                    "data": chunk["data"], "offset": chunk["offset"]})
            offset = chunk["offset"]
            if chunk["offset"] >= chunk["size"]:  # caught up: wait for more
                await asyncio.sleep(TAIL_INTERVAL)
