"""What the head keeps in Redis so that a restarted head carries on: the cluster's id and
token, its jobs, its actors (with their specs and restart counts), its placement groups and
the records of submitted jobs.

``aray start --head --storage redis://[:PASSWORD@]HOST:PORT[/DB]`` (``rediss://`` for TLS,
or ``ARAY_STORAGE``) turns it on. Values are msgpack (never pickles: whoever can write to
Redis must not be able to run code in the head), under keys that start with ``aray:``.
Writes are queued and sent in order by one task of the head, a batch at a time
(:meth:`RedisStorage.put`); a failed write is logged, and retried with the next batch.

Example:
    >>> storage = open_storage("redis://127.0.0.1:1/0")
    >>> storage.url
    'redis://127.0.0.1:1/0'
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack

log = logging.getLogger("aray.head")

#: the hashes the head keeps (each: id -> msgpack of a row)
TABLES = ("cluster", "jobs", "actors", "groups", "submissions")
PREFIX = "aray:"
#: how long a write may wait to be batched with the ones after it
FLUSH_DELAY = 0.02


class StorageError(RuntimeError):
    """The head's storage cannot be reached or read; the message says what to do."""


class RedisStorage:
    """The head's tables in Redis (see the module's docstring)."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis  # (imported only by heads that use storage)

        self.url = url
        self._client = redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        self._pending: dict[tuple[str, str], bytes | None] = {}  # (table, key) -> row or None
        self._flusher: asyncio.Task | None = None
        self.failing = False  # the last write failed (said once until one succeeds)
        self.closed = False

    async def load(self) -> dict[str, dict[str, Any]]:
        """Every table as ``{table: {key: row}}``; StorageError if Redis cannot be read."""
        try:
            await self._client.ping()
            out = {}
            for table in TABLES:
                raw = await self._client.hgetall(PREFIX + table)
                out[table] = {_text(k): msgpack.unpackb(v, raw=False, strict_map_key=False)
                              for k, v in raw.items()}
            return out
        except Exception as exc:  # redis' errors, OSError, a row that is not msgpack
            raise _unreadable(self.url, exc) from exc

    def put(self, table: str, key: str, row: Any) -> None:
        """Write ``row`` (msgpack-able) under ``key`` soon; ``None`` deletes it."""
        if self.closed:
            return
        self._pending[(table, key)] = None if row is None else msgpack.packb(
            row, use_bin_type=True)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                pipe = self._client.pipeline(transaction=True)
                for (table, key), value in batch.items():
                    if value is None:
                        pipe.hdel(PREFIX + table, key)
                    else:
                        pipe.hset(PREFIX + table, key, value)
                await pipe.execute()
                if self.failing:
                    log.warning("the head's storage at %s works again", _where(self.url))
                self.failing = False
            except Exception as exc:
                if not self.failing:
                    log.error("cannot write the head's state to %s: %s; a restarted head "
                              "would miss what changed since (retrying)", _where(self.url), exc)
                self.failing = True
                for item, value in batch.items():  # newer writes of a row win
                    self._pending.setdefault(item, value)
                await asyncio.sleep(1.0)

    async def drain(self) -> None:
        """Wait until what was put is written (or has failed once)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait({self._flusher}, timeout=5)
            if self.failing:
                return

    async def aclose(self) -> None:
        self.closed = True
        if self._flusher is not None:
            await self.drain()
            self._flusher.cancel()
        await self._client.aclose()


def check_url(url: str) -> None:
    """Refuse a ``--storage`` that is not a Redis URL (``redis://``, ``rediss://``,
    ``unix://``), or a machine without the redis client.

    Example:
        >>> check_url("postgres://db")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --storage must be a Redis URL (redis://HOST:PORT[/DB], ...
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--storage must be a Redis URL (redis://HOST:PORT[/DB], rediss:// "
                         f"for TLS), not {url!r}")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ValueError("--storage needs the redis client: pip install 'aray[redis]'") from None


def open_storage(url: str) -> RedisStorage:
    """The storage a ``--storage`` URL names (see :func:`check_url`)."""
    check_url(url)
    return RedisStorage(url)


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def _where(url: str) -> str:
    """A storage URL as it is printed: without its password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('@')[-1]}"


def _unreadable(url: str, exc: Exception) -> StorageError:
    return StorageError(
        f"cannot read the head's storage at {_where(url)}: {str(exc).rstrip('.')}. Start "
        "Redis there (or fix --storage / ARAY_STORAGE), or start the head without --storage "
        "for a head whose state ends with it")


def stored_token(url: str) -> str:
    """The token a cluster's earlier head kept in the storage at ``url`` ("" if none): a
    restarted head takes it, so that the nodes and drivers that wait for it get back in.

    Raises:
        StorageError: the storage cannot be read.
    """
    import redis

    try:
        raw = redis.from_url(url, socket_connect_timeout=5).hget(PREFIX + "cluster", "cluster")
    except Exception as exc:
        raise _unreadable(url, exc) from exc
    return msgpack.unpackb(raw, raw=False).get("token", "") if raw else ""
