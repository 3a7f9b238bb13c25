"""Run coroutines on the runtime's loop from other threads (a small blocking portal).

Sync code calls :func:`call`; it schedules the coroutine on the runtime loop and blocks until
it finishes. Calling it *on* the runtime loop would deadlock, so that fails loudly with a
hint to ``await`` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: how long a thread blocked in a call waits at a time before it checks for a cancel
BLOCKED_WAIT_SLICE = 0.05


class LoopThread:
    """A private event loop running in a daemon thread (used when ``init`` is called from
    sync code)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="aray-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def refuse_on_loop(loop: asyncio.AbstractEventLoop, what: str) -> None:
    """Blocking calls on the runtime's own loop would deadlock: say what to do instead."""
    if on_loop(loop):
        raise RuntimeError(
            f"aray.{what}() blocks, and it was called on the event loop that runs aray, which "
            f"would deadlock. In async code use `await aray.aio.{what}(...)` (or `await ref`).")


def call(loop: asyncio.AbstractEventLoop, fn: Callable[..., Coroutine[Any, Any, T]], *args,
         what: str, **kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` on ``loop`` and block this thread for its result."""
    refuse_on_loop(loop, what)
    if loop.is_closed():
        from .exceptions import NotInitializedError

        raise NotInitializedError("aray's event loop is closed: call aray.init() again")
    fut = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop)
    try:
        while True:
            # in slices: an exception raised into this thread (a cancel of the sync task
            # blocked here, see _thread_cancel) lands only when Python code runs
            try:
                return fut.result(timeout=BLOCKED_WAIT_SLICE)
            except concurrent.futures.TimeoutError:
                if fut.done():
                    raise  # the call's own TimeoutError (aray.get's GetTimeoutError)
    except BaseException:
        fut.cancel()  # e.g. KeyboardInterrupt or a cancel while blocked: stop it too
        raise


async def on_runtime(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the runtime loop, from whichever loop we are on."""
    if on_loop(loop):
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn(*args)`` on a thread, so that the loop stays responsive.

    Once the interpreter is exiting (``atexit``, where :func:`aray.shutdown` runs for a
    program that did not call it), no new thread may start: ``fn`` then runs here, since
    blocking the loop no longer matters and skipping it would leave its work undone.

    Example:
        >>> import asyncio
        >>> asyncio.run(off_loop(sum, [1, 2, 3]))
        6
    """
    try:
        return await asyncio.to_thread(fn, *args)
    except RuntimeError as exc:
        # "cannot schedule new futures after [interpreter] shutdown": the executors' end
        if "cannot schedule new futures" not in str(exc):
            raise
        return fn(*args)
