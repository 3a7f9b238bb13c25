"""Calls handed to an event loop from other threads, one wake-up per batch.

``loop.call_soon_threadsafe`` writes to the loop's self-pipe on every call: a system call
that, in a loop of ``.remote()`` calls, costs more than the rest of the submission. An
:class:`Inbox` keeps the calls in a list and wakes the loop only for the first of a batch;
the loop then runs the whole list, in the order posted.

Order with plain ``call_soon_threadsafe``: a call posted here runs before anything that the
same thread schedules on the loop afterwards, because its batch's wake-up was scheduled no
later than the post.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class Inbox:
    """Post ``fn(*args)`` from any thread to run on ``loop``, in order, batched.

    Examples:
        >>> import asyncio, threading
        >>> seen = []
        >>> async def main():
        ...     inbox = Inbox(asyncio.get_running_loop())
        ...     t = threading.Thread(target=lambda: [inbox.post(seen.append, i)
        ...                                          for i in range(3)])
        ...     t.start(); t.join()
        ...     await asyncio.sleep(0)
        >>> asyncio.run(main())
        >>> seen
        [0, 1, 2]
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[Callable[..., Any], tuple]] = []
        self._lock = threading.Lock()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Any thread: run ``fn(*args)`` on the loop after everything posted before.

        Raises ``RuntimeError`` if the loop is closed (as ``call_soon_threadsafe`` does).
        """
        with self._lock:
            self._items.append((fn, args))
            if len(self._items) > 1:
                return  # the loop is due to take this batch already
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # closed: nothing will take them
            with self._lock:
                self._items.clear()
            raise

    def _run(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for fn, args in items:
            try:
                fn(*args)
            except Exception as exc:  # one failing call must not drop the rest of the batch
                self.loop.call_exception_handler({
                    "message": f"exception in {getattr(fn, '__qualname__', fn)!r}",
                    "exception": exc})
