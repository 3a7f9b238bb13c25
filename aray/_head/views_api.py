"""The dashboard's read-only JSON API: ``/api/summary``, ``/api/nodes``, ``/api/tasks``,
``/api/actors``, ``/api/objects``, ``/api/jobs``, ``/api/placement_groups``,
``/api/timeline``, ``/api/logs`` and ``/api/logs/{node_id}/{file}``, each the JSON of a view
of :mod:`aray._head.views`; and the checks of the parameters they take (which the
dashboard's websocket uses too).

It is apart from :class:`~aray._head.dashboard.Dashboard`, which serves the app (its
thread, its listener, the login guard, the websocket), because building these answers is a
job of its own: read the parameters, take what the view needs, encode it. It needs three
things, and the dashboard passes them in: the head (views that ask the nodes read its
links), ``snapshot(task_rows)`` (the head's tables, taken on the head's loop) and
``on_head(coro)`` (runs a coroutine on the head's loop). The login guard stands in front of
every route here: a handler runs only for a request that holds the token.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from ..node.logs import MAX_OFFSET, MAX_READ
from . import views

if TYPE_CHECKING:
    from .server import Head

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


class BadParam(ValueError):
    """A parameter out of its range; the dashboard answers 400 (or, on the websocket, an
    error message) with this text, which names the parameter and its range.

    Example:
        >>> str(BadParam("limit must be an integer from 0 to 1000, not '-1'"))
        "limit must be an integer from 0 to 1000, not '-1'"
    """


#: an integer as a query string spells it: no sign but '-', no spaces, no '_', no exponent
_INTEGER = re.compile(r"-?[0-9]{1,20}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def int_param(source: Mapping, name: str, default: int, bounds: tuple[int, int]) -> int:
    """``source[name]`` (a query's string, or a number of a websocket command) as an integer
    within ``bounds``; ``default`` when it is missing or empty. Raises BadParam otherwise:
    for junk, floats, booleans and anything out of range.

    Example:
        >>> int_param({"offset": "20"}, "offset", 0, (0, 100)), int_param({}, "offset", 0, (0, 9))
        (20, 0)
        >>> int_param({"offset": "1e3"}, "offset", 0, (0, 100))
        Traceback (most recent call last):
        ...
        aray._head.views_api.BadParam: offset must be an integer from 0 to 100, not '1e3'
    """
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
    raises BadParam for anything else.

    Example:
        >>> str_param({"state": "RUNNING"}, "state"), str_param({}, "name")
        ('RUNNING', '')
    """
    value = source.get(name, "")
    if isinstance(value, str) and len(value) <= MAX_STRING:
        return value
    raise BadParam(f"{name} must be a string of at most {MAX_STRING} characters, "
                   f"not {_shown(value)}")


def _window(query: Mapping) -> tuple[int, int]:
    """The ``offset`` and ``limit`` of a page of rows."""
    return int_param(query, "offset", 0, PAGE_OFFSET), int_param(query, "limit", 100, PAGE_LIMIT)


class TakeSnapshot(Protocol):
    """``snapshot(task_rows)``: the head's tables as they are now, taken on the head's
    loop (``task_rows``: for the views that list tasks).

    Example:
        >>> async def snapshot(task_rows: bool = False) -> views.Snapshot: ...
        >>> taker: TakeSnapshot = snapshot
    """

    def __call__(self, task_rows: bool = False) -> Awaitable[views.Snapshot]: ...


#: ``on_head(coro)``: await ``coro`` on the head's loop (the views that ask the nodes)
OnHead = Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]]


class ViewsApi:
    """The JSON API over the views of one head. Its interface is the constructor and
    ``add_routes``; the handlers are its own.

    Example:
        >>> from aiohttp import web
        >>> async def snapshot(task_rows=False): ...
        >>> async def on_head(coro): return await coro
        >>> app = web.Application()
        >>> ViewsApi(None, snapshot, on_head).add_routes(app.router)
        >>> [r.resource.canonical for r in app.router.routes() if r.method == "GET"][:3]
        ['/api/summary', '/api/nodes', '/api/tasks']
    """

    def __init__(self, head: Head, snapshot: TakeSnapshot, on_head: OnHead) -> None:
        self._head = head
        self._snapshot = snapshot
        self._on_head = on_head

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Serve every route of the API on ``router`` (see the class's example)."""
        router.add_get("/api/summary", self._summary)
        router.add_get("/api/nodes", self._nodes)
        router.add_get("/api/tasks", self._tasks)
        router.add_get("/api/actors", self._actors)
        router.add_get("/api/objects", self._objects)
        router.add_get("/api/jobs", self._jobs)
        router.add_get("/api/placement_groups", self._placement_groups)
        router.add_get("/api/timeline", self._timeline)
        router.add_get("/api/logs", self._logs)
        router.add_get("/api/logs/{node_id}/{file}", self._log)

    async def _summary(self, request: web.Request) -> web.Response:
        """The counts of nodes, resources, tasks, actors and jobs."""
        return web.json_response(views.summary(await self._snapshot()))

    async def _nodes(self, request: web.Request) -> web.Response:
        """Every node, in one page."""
        rows = views.nodes(await self._snapshot())
        return web.json_response(views.page(rows, 0, len(rows), len(rows)))

    async def _tasks(self, request: web.Request) -> web.Response:
        """A page of tasks (``offset``, ``limit``), filtered by ``state``, ``name`` and
        ``job_id``."""
        q = request.query
        offset, limit = _window(q)
        state, name, job_id = str_param(q, "state"), str_param(q, "name"), str_param(q, "job_id")
        return web.json_response(views.tasks(
            await self._snapshot(task_rows=True), state=state, name=name, job_id=job_id,
            offset=offset, limit=limit))

    async def _actors(self, request: web.Request) -> web.Response:
        """A page of actors (``offset``, ``limit``), filtered by ``state``."""
        offset, limit = _window(request.query)
        state = str_param(request.query, "state")
        return web.json_response(views.actors(
            await self._snapshot(), state=state, offset=offset, limit=limit))

    async def _objects(self, request: web.Request) -> web.Response:
        """A page of the objects the nodes hold, biggest first, and their total size."""
        offset, limit = _window(request.query)  # checked before the nodes are asked
        rows = sorted(await self._on_head(views.objects(self._head)), key=lambda o: -o["size"])
        body = views.page_of(rows, offset, limit)
        body["total_bytes"] = sum(o["size"] for o in rows)
        return web.json_response(body)

    async def _jobs(self, request: web.Request) -> web.Response:
        """Every job, newest first, in one page."""
        rows = list(reversed(views.jobs(await self._snapshot())))
        return web.json_response(views.page(rows, 0, len(rows), len(rows)))

    async def _placement_groups(self, request: web.Request) -> web.Response:
        """The placement groups, newest first, a page at a time (``offset``, ``limit``)."""
        offset, limit = _window(request.query)
        rows = list(reversed((await self._snapshot()).group_rows))
        return web.json_response(views.page_of(rows, offset, limit))

    async def _timeline(self, request: web.Request) -> web.Response:
        """The tasks of the last ``seconds`` (60 by default), for the timeline."""
        seconds = int_param(request.query, "seconds", 60, TIMELINE_SECONDS)
        return web.json_response(views.timeline(await self._snapshot(task_rows=True), seconds))

    async def _logs(self, request: web.Request) -> web.Response:
        """The log files of every live node."""
        return web.json_response({"rows": await self._on_head(views.log_files(self._head))})

    async def _log(self, request: web.Request) -> web.Response:
        """A piece of one node's log file (``offset``, ``limit``); 404 for a file or node
        that is not there, 504 for a node that does not answer."""
        where, q = request.match_info, request.query
        node_id, file = str_param(where, "node_id"), str_param(where, "file")
        offset, limit = int_param(q, "offset", 0, LOG_OFFSET), int_param(q, "limit", 0, LOG_LIMIT)
        try:
            body = await self._on_head(views.read_log(self._head, node_id, file, offset, limit))
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except (TimeoutError, ConnectionError):
            return web.json_response({"error": f"node {node_id} did not answer"}, status=504)
        return web.json_response(body)
