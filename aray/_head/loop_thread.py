"""An event loop of its own in a thread, and calls between it and the loop that started it.

The dashboard runs on one of these, so that building a big page never holds up the loop
that serves the cluster (the head's links and the node agent's leases).

Example:
    >>> async def main():
    ...     thread = LoopThread("example")
    ...     thread.start()
    ...     try:
    ...         return await thread.run(asyncio.sleep(0, "done on the thread's loop"))
    ...     finally:
    ...         await thread.stop()
    >>> asyncio.run(main())
    "done on the thread's loop"
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on ``loop`` (another thread's) from the running loop; cancelling the
    caller cancels it there too."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


class LoopThread:
    """A daemon thread that runs an event loop until :meth:`stop`; what is still running
    on it then is cancelled, and the loop closed."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on this thread's loop."""
        return await run_on(self.loop, coro)

    async def stop(self) -> None:
        """Stop the loop and wait (without blocking the caller's loop) for the thread."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        elif not self.loop.is_closed() and self._thread.ident is None:
            self.loop.close()  # never started

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
