"""Submit jobs to a cluster and follow them: Ray's ``ray.job_submission`` API.

:class:`JobSubmissionClient` talks to the job API of the head's dashboard (see
docs/jobs.md). Each method has an async version (``submit_job_async``...) under the sync
one, which runs it to completion; ``tail_job_logs`` is async, as in Ray.

Example:
    >>> from aray.job_submission import JobStatus
    >>> JobStatus.SUCCEEDED.is_terminal()
    True
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ._head.jobs import JobStatus
from ._packages import pack
from ._runtime_env import PACKAGE_SCHEME, check
from ._runtime_env_client import replace_folders

__all__ = ["JobDetails", "JobInfo", "JobStatus", "JobSubmissionClient", "JobType"]

#: how long a request to the dashboard may take (an upload of a big package too)
REQUEST_TIMEOUT = 300.0


class JobType:
    """Ray's job types: a job of ``aray job submit`` is a SUBMISSION."""

    SUBMISSION = "SUBMISSION"
    DRIVER = "DRIVER"


@dataclasses.dataclass
class JobDetails:
    """One job's record, with Ray's fields (times in milliseconds since the epoch).

    Example:
        >>> JobDetails(submission_id="a", entrypoint="python x.py", status="RUNNING").status
        <JobStatus.RUNNING: 'RUNNING'>
    """

    submission_id: str
    entrypoint: str
    status: JobStatus
    type: str = JobType.SUBMISSION
    job_id: str | None = None
    message: str = ""
    start_time: int | None = None
    end_time: int | None = None
    driver_exit_code: int | None = None
    runtime_env: dict = dataclasses.field(default_factory=dict)
    metadata: dict = dataclasses.field(default_factory=dict)
    entrypoint_num_cpus: float = 0
    entrypoint_num_gpus: float = 0
    entrypoint_resources: dict = dataclasses.field(default_factory=dict)
    driver_pid: int | None = None
    driver_node_id: str | None = None

    def __post_init__(self) -> None:
        self.status = JobStatus(self.status)

    @classmethod
    def from_json(cls, data: dict) -> JobDetails:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


#: Ray's older name
JobInfo = JobDetails


class JobSubmissionClient:
    """A client of a cluster's job API.

    Args:
        address: the dashboard's URL (``http://HOST:8265``); or ``HOST:PORT`` of a head,
            or a session directory, of a cluster on this machine (its dashboard is found
            there). Default: ``ARAY_ADDRESS``, then the cluster on this machine.
        token: the cluster's token (default: ``ARAY_TOKEN``, or the local session's).

    Example:
        >>> client = JobSubmissionClient("http://127.0.0.1:8265", token="secret")
        >>> client.address
        'http://127.0.0.1:8265'
    """

    def __init__(self, address: str | None = None, *, token: str | None = None) -> None:
        self.address, self._token = _dashboard_of(address, token)

    # --- async ---------------------------------------------------------------------------
    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"}
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session, \
                    session.request(method, self.address + path, **kwargs) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = {"error": (await response.text())[:300]}
                if response.status == 401:
                    raise PermissionError(f"the cluster at {self.address} refused the token: "
                                          "pass the cluster's token (token=, or ARAY_TOKEN)")
                if response.status >= 400:
                    error = body.get("error", body) if isinstance(body, dict) else body
                    raise (LookupError if response.status == 404 else RuntimeError)(error)
                return body
        except aiohttp.ClientConnectionError as exc:
            raise ConnectionError(f"no aray dashboard answers at {self.address} ({exc}); "
                                  "check the address and that the head runs with its "
                                  "dashboard") from None

    async def _upload_env(self, runtime_env: dict | None) -> dict:
        """The env with its local folders packed and uploaded (each package once)."""
        return await replace_folders(check(runtime_env or {}, "submit_job()"), self._upload)

    async def _upload(self, path: str, excludes: list, prefix: str, top: str) -> str:
        if path.startswith(PACKAGE_SCHEME):
            return path
        name, data = await asyncio.to_thread(pack, path, excludes, prefix, top)
        try:
            await self._request("GET", f"/api/packages/{name}")
        except LookupError:  # not there yet
            await self._request("PUT", f"/api/packages/{name}", data=data)
        return PACKAGE_SCHEME + name

    async def submit_job_async(self, *, entrypoint: str, submission_id: str | None = None,
                               runtime_env: dict | None = None, metadata: dict | None = None,
                               entrypoint_num_cpus: float | None = None,
                               entrypoint_num_gpus: float | None = None,
                               entrypoint_resources: dict | None = None,
                               job_id: str | None = None) -> str:
        """The async version of :meth:`submit_job`.

        Example:
            >>> async def look(client):
            ...     return await client.submit_job_async(entrypoint="python job.py")
        """
        body = {"entrypoint": entrypoint, "submission_id": submission_id or job_id,
                "runtime_env": await self._upload_env(runtime_env), "metadata": metadata,
                "entrypoint_num_cpus": entrypoint_num_cpus,
                "entrypoint_num_gpus": entrypoint_num_gpus,
                "entrypoint_resources": entrypoint_resources}
        reply = await self._request("POST", "/api/jobs/",
                                    json={k: v for k, v in body.items() if v is not None})
        return reply["submission_id"]

    async def get_job_info_async(self, job_id: str) -> JobDetails:
        """The async version of :meth:`get_job_info`.

        Example:
            >>> async def look(client):
            ...     return await client.get_job_info_async("job-1")
        """
        return JobDetails.from_json(await self._request("GET", f"/api/jobs/{job_id}"))

    async def get_job_status_async(self, job_id: str) -> JobStatus:
        """The async version of :meth:`get_job_status`.

        Example:
            >>> async def look(client):
            ...     return await client.get_job_status_async("job-1")
        """
        return (await self.get_job_info_async(job_id)).status

    async def get_job_logs_async(self, job_id: str) -> str:
        """The async version of :meth:`get_job_logs`.

        Example:
            >>> async def look(client):
            ...     return await client.get_job_logs_async("job-1")
        """
        return (await self._request("GET", f"/api/jobs/{job_id}/logs"))["logs"]

    async def stop_job_async(self, job_id: str) -> bool:
        """The async version of :meth:`stop_job`.

        Example:
            >>> async def look(client):
            ...     return await client.stop_job_async("job-1")
        """
        return (await self._request("POST", f"/api/jobs/{job_id}/stop"))["stopped"]

    async def delete_job_async(self, job_id: str) -> bool:
        """The async version of :meth:`delete_job`.

        Example:
            >>> async def look(client):
            ...     return await client.delete_job_async("job-1")
        """
        return (await self._request("DELETE", f"/api/jobs/{job_id}"))["deleted"]

    async def list_jobs_async(self) -> list[JobDetails]:
        """The async version of :meth:`list_jobs`.

        Example:
            >>> async def look(client):
            ...     return await client.list_jobs_async()
        """
        return [JobDetails.from_json(j) for j in await self._request("GET", "/api/jobs/")]

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """The job's output as it comes, from its start until it ends (async, as in Ray).

        Example:
            >>> async def follow(client, job_id):
            ...     async for text in client.tail_job_logs(job_id):
            ...         print(text, end="")
        """
        await self.get_job_info_async(job_id)  # an unknown id raises here
        headers = {"Authorization": f"Bearer {self._token}"}
        async with aiohttp.ClientSession(headers=headers) as session, \
                session.ws_connect(self.address + f"/api/jobs/{job_id}/logs/tail") as ws:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    yield message.data
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break

    # --- sync ----------------------------------------------------------------------------
    def submit_job(self, *, entrypoint: str, submission_id: str | None = None,
                   runtime_env: dict | None = None, metadata: dict | None = None,
                   entrypoint_num_cpus: float | None = None,
                   entrypoint_num_gpus: float | None = None,
                   entrypoint_resources: dict | None = None,
                   job_id: str | None = None) -> str:
        """Submit ``entrypoint`` (a shell command) to run on the cluster; returns its
        submission id. A ``working_dir`` or ``py_modules`` folder is packed and uploaded.

        Example:
            >>> def run(client):
            ...     return client.submit_job(entrypoint="python job.py",
            ...                              runtime_env={"working_dir": "."})
        """
        return _run(self.submit_job_async(
            entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
            metadata=metadata, entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus, entrypoint_resources=entrypoint_resources,
            job_id=job_id))

    def get_job_info(self, job_id: str) -> JobDetails:
        """The job's record; LookupError for an unknown id.

        Example:
            >>> def look(client):
            ...     return client.get_job_info("job-1").status
        """
        return _run(self.get_job_info_async(job_id))

    def get_job_status(self, job_id: str) -> JobStatus:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED.

        Example:
            >>> def look(client):
            ...     return client.get_job_status("job-1").is_terminal()
        """
        return _run(self.get_job_status_async(job_id))

    def get_job_logs(self, job_id: str) -> str:
        """Everything the job printed so far.

        Example:
            >>> def look(client):
            ...     return client.get_job_logs("job-1")
        """
        return _run(self.get_job_logs_async(job_id))

    def stop_job(self, job_id: str) -> bool:
        """SIGTERM the job, then SIGKILL after a grace period; False if it had ended.

        Example:
            >>> def look(client):
            ...     return client.stop_job("job-1")
        """
        return _run(self.stop_job_async(job_id))

    def delete_job(self, job_id: str) -> bool:
        """Forget an ended job and its logs (RuntimeError if it still runs).

        Example:
            >>> def look(client):
            ...     return client.delete_job("job-1")
        """
        return _run(self.delete_job_async(job_id))

    def list_jobs(self) -> list[JobDetails]:
        """Every job of the cluster, oldest first.

        Example:
            >>> def look(client):
            ...     return [job.submission_id for job in client.list_jobs()]
        """
        return _run(self.list_jobs_async())


def _run(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("JobSubmissionClient's sync methods cannot run inside an event loop: "
                       "await the *_async versions there (await client.submit_job_async(...))")


def _dashboard_of(address: str | None, token: str | None) -> tuple[str, str]:
    """The dashboard's URL and the token for ``address`` (see JobSubmissionClient)."""
    address = address or os.environ.get("ARAY_ADDRESS") or None
    token = token or os.environ.get("ARAY_TOKEN")
    if address is not None and address.startswith(("http://", "https://")):
        if not token:
            raise ValueError(f"connecting to {address} needs the cluster's token: pass "
                             "token=... or set ARAY_TOKEN")
        return address.rstrip("/"), token
    from ._local import reach_cluster

    info = reach_cluster(address, token)
    if not info.get("dashboard_url"):
        raise ConnectionError(
            f"the cluster at {address or 'this machine'} has no dashboard, which serves the "
            "job API: start its head with the dashboard, or give the dashboard's URL "
            "(http://HOST:8265)")
    return info["dashboard_url"].rstrip("/"), info["token"]
