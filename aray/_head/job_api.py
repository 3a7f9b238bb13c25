"""The job submission API on the dashboard's server, with Ray's paths and JSON.

=======  ===============================  ==========================================
POST     ``/api/jobs/``                   submit: ``{"entrypoint", "submission_id",
                                          "runtime_env", "metadata",
                                          "entrypoint_num_cpus", ...}``
GET      ``/api/jobs/``                   every job's details
GET      ``/api/jobs/{id}``               one job's details
GET      ``/api/jobs/{id}/logs``          ``{"logs": ...}``
GET      ``/api/jobs/{id}/logs/tail``     a websocket of the output as it comes
POST     ``/api/jobs/{id}/stop``          ``{"stopped": bool}``
DELETE   ``/api/jobs/{id}``               ``{"deleted": bool}``
GET/PUT  ``/api/packages/{name}``         does the head hold a package / upload one
=======  ===============================  ==========================================

Everything needs the cluster's token (the dashboard's guard checks it). Errors answer with
``{"error": message}`` and a status that says what kind (400, 404, 409).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .jobs import JobError, JobManager, JobStatus
from .packages import NAME

if TYPE_CHECKING:
    from .dashboard import Dashboard

#: how often a followed log is read for more
TAIL_INTERVAL = 0.2


def add_routes(dashboard: Dashboard) -> None:
    """Serve the job API on ``dashboard``'s app."""
    api = JobApi(dashboard)
    router = dashboard.app.router
    router.add_post("/api/jobs/", api.submit)
    router.add_get("/api/jobs/", api.list)
    router.add_get("/api/jobs/{id}", api.info)
    router.add_get("/api/jobs/{id}/logs", api.logs)
    router.add_get("/api/jobs/{id}/logs/tail", api.tail)
    router.add_post("/api/jobs/{id}/stop", api.stop)
    router.add_delete("/api/jobs/{id}", api.delete)
    router.add_get("/api/packages/{name}", api.has_package)
    router.add_put("/api/packages/{name}", api.put_package)


class JobApi:
    """The handlers; they run on the dashboard's thread and ask the head's loop."""

    def __init__(self, dashboard: Dashboard) -> None:
        self._dashboard = dashboard

    @property
    def _jobs(self) -> JobManager:
        manager = self._dashboard.head.submitted_jobs
        if manager is None:
            raise JobError("this head runs no job manager", status=503)
        return manager

    async def _call(self, fn, *args: Any, **kwargs: Any) -> Any:
        async def run():
            result = fn(*args, **kwargs)
            return await result if asyncio.iscoroutine(result) else result

        return await self._dashboard._on_head(run())

    async def _answer(self, fn, *args: Any, **kwargs: Any) -> web.Response:
        try:
            return web.json_response(await self._call(fn, *args, **kwargs))
        except JobError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)

    async def submit(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        fields = ("entrypoint", "submission_id", "runtime_env", "metadata",
                  "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_resources")
        unknown = set(body) - set(fields) - {"job_id", "entrypoint_memory"}
        if unknown:
            return web.json_response({"error": f"unknown fields {sorted(unknown)}; the "
                                               f"fields are {', '.join(fields)}"}, status=400)
        args = {k: body[k] for k in fields if body.get(k) is not None}
        args.setdefault("submission_id", body.get("job_id"))

        def submit() -> dict:
            submission_id = self._jobs.submit(**args)
            return {"submission_id": submission_id, "job_id": submission_id}

        return await self._answer(submit)

    async def list(self, request: web.Request) -> web.Response:
        return await self._answer(lambda: self._jobs.list())

    async def info(self, request: web.Request) -> web.Response:
        return await self._answer(lambda: self._jobs.info(request.match_info["id"]))

    async def logs(self, request: web.Request) -> web.Response:
        submission_id = request.match_info["id"]

        async def logs() -> dict:
            return {"logs": await self._jobs.logs(submission_id)}

        return await self._answer(logs)

    async def stop(self, request: web.Request) -> web.Response:
        return await self._answer(lambda: {"stopped": self._jobs.stop(request.match_info["id"])})

    async def delete(self, request: web.Request) -> web.Response:
        return await self._answer(lambda: {"deleted": self._jobs.delete(
            request.match_info["id"])})

    async def tail(self, request: web.Request) -> web.StreamResponse:
        """The job's output as text frames, from the start, until it has ended."""
        submission_id = request.match_info["id"]
        try:
            await self._call(lambda: self._jobs.info(submission_id))
        except JobError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        offset = 0
        while not ws.closed:
            status = await self._call(lambda: self._jobs.info(submission_id)["status"])
            # read after the status: what a job that has ended wrote is all there
            text, end = await self._call(self._jobs.read_log, submission_id, offset)
            if end != offset:
                offset = end
                await ws.send_str(text)
            elif JobStatus(status).is_terminal():
                break
            else:
                await asyncio.sleep(TAIL_INTERVAL)
        await ws.close()
        return ws

    async def has_package(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not NAME.match(name):
            return web.json_response({"error": f"{name!r} is not a package name"}, status=400)
        store = self._dashboard.head.packages
        size = store.size(name) if store is not None else -1
        if size < 0:
            return web.json_response({"error": f"no package {name}"}, status=404)
        return web.json_response({"name": name, "size": size})

    async def put_package(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        store = self._dashboard.head.packages
        if store is None:
            return web.json_response({"error": "this head keeps no packages"}, status=503)
        data = await request.read()
        try:
            await self._call(store.put, name, data)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"name": name, "size": len(data)})
