"""A core's side of runtime envs: the env its tasks inherit, packing and uploading the
folders of the envs it submits, and setting up the env of a worker's pool.

What a task runs in is its own ``runtime_env`` merged over its parent's (:func:`inherited`):
the job's (``aray.init(runtime_env=...)``) in a driver, the worker's own env in a task or
actor. Before a lease is asked for, :meth:`RuntimeEnvs.wire` turns the env into its wire
form: each local folder packed once per process and uploaded to the head once per cluster
(the head already holding a package of that name is asked first).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable

from . import _protocol as P
from ._link import CONTROL_TIMEOUT, Link
from ._packages import pack
from ._runtime_env import PACKAGE_SCHEME, merge
from ._runtime_env_setup import setup

#: bytes per piece of an upload or a download
PIECE = 4 * 2**20


class RuntimeEnvs:
    """One core's runtime envs.

    Args:
        loop: the core's loop (uploads and downloads run there).
        head_link: the link to the head, dialled when first needed.
        cache_root: where this node keeps unpacked packages and pip environments.

    Example:
        >>> envs = RuntimeEnvs(None, None, "/tmp/cache")
        >>> envs.inherited({"env_vars": {"A": "1"}})
        {'env_vars': {'A': '1'}}
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None,
                 head_link: Callable[[], Awaitable[Link]] | None, cache_root: str) -> None:
        self._loop = loop
        self._head_link = head_link
        self.cache_root = cache_root
        #: what tasks submitted here inherit: the job's env in a driver, the env a
        #: worker was set up with in a worker
        self.parent: dict = {}
        self._uris: dict[tuple, str] = {}  # (path, excludes, prefix, top) -> package URI
        self._packing: asyncio.Lock | None = None

    def inherited(self, own: dict) -> dict:
        """The env of a task or actor submitted here with ``own`` (checked) env."""
        return merge(self.parent, own)

    # --- the submitting side ---------------------------------------------------------------
    async def wire(self, env: dict) -> dict:
        """``env`` with each local folder or file replaced by its uploaded package."""
        if "working_dir" not in env and "py_modules" not in env:
            return env
        if self._packing is None:
            self._packing = asyncio.Lock()
        async with self._packing:  # one at a time: the same folder is never packed twice
            return await replace_folders(env, self._uri)

    async def _uri(self, path: str, excludes: list, prefix: str, top: str) -> str:
        if path.startswith(PACKAGE_SCHEME):
            return path
        key = (path, tuple(excludes), prefix, top)
        uri = self._uris.get(key)
        if uri is None:
            loop = asyncio.get_running_loop()
            name, data = await loop.run_in_executor(None, pack, path, excludes, prefix, top)
            await self._upload(name, data)
            uri = self._uris[key] = PACKAGE_SCHEME + name
        return uri

    async def _upload(self, name: str, data: bytes) -> None:
        assert self._head_link is not None
        head = await self._head_link()
        held: P.PackageSize = await head.request(lambda r: P.PackageInfo(r, name),
                                                 timeout=CONTROL_TIMEOUT)
        if held.size == len(data):
            return  # uploaded before, by this process or another
        offset = 0
        while True:
            piece = data[offset:offset + PIECE]
            last = offset + len(piece) >= len(data)
            await head.request(functools.partial(P.PutPackage, name=name, offset=offset,
                                                 data=piece, last=last),
                               timeout=CONTROL_TIMEOUT)
            offset += len(piece)
            if last:
                return

    # --- the worker side -------------------------------------------------------------------
    def set_up(self, wire: dict) -> None:
        """On a thread of its own: make this worker run in ``wire``, which tasks it
        submits then inherit."""
        setup(wire, self.cache_root, self._fetch)
        self.parent = wire

    def _fetch(self, name: str) -> bytes:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._download(name), self._loop).result()

    async def _download(self, name: str) -> bytes:
        assert self._head_link is not None
        return await download_package(await self._head_link(), name)


async def replace_folders(env: dict, uri_of: Callable[[str, list, str, str], Awaitable[str]]
                          ) -> dict:
    """``env`` with its ``working_dir`` and each of its ``py_modules`` replaced by the
    package ``await uri_of(path, excludes, prefix, top)`` makes of it, and without
    ``excludes``, which packing applied. (``top``: a ``py_modules`` folder keeps its name
    in its package, so that it imports by that name.)"""
    out = dict(env)
    excludes = list(out.pop("excludes", []))
    if "working_dir" in env:
        out["working_dir"] = await uri_of(env["working_dir"], excludes, "working_dir", "")
    if "py_modules" in env:
        out["py_modules"] = [await uri_of(p, excludes, "py_modules", os.path.basename(p))
                             for p in env["py_modules"]]
    return out


async def download_package(head: Link, name: str) -> bytes:
    """The bytes of package ``name``, read from the head a piece at a time."""
    pieces, offset, size = [], 0, None
    while size is None or offset < size:
        reply: P.PackageData = await head.request(
            functools.partial(P.GetPackage, name=name, offset=offset, length=PIECE),
            timeout=CONTROL_TIMEOUT)
        size = reply.size
        if not reply.data and offset < size:
            raise ConnectionError(f"the head sent no more of package {name}")
        pieces.append(reply.data)
        offset += len(reply.data)
    return b"".join(pieces)
