"""Periodic loops that survive their own failures.

A long-lived process runs a few loops on a timer: heartbeats, log tailing, watchdogs,
task-event batches. If one round raises (a full file-descriptor table makes ``open`` fail,
a peer sends something odd), the loop must not die silently: that is how a node that ran
out of descriptors for a moment used to stop heart-beating and get declared dead. Every
such loop is :func:`every`: it logs the exception (at most once per ``LOG_EVERY`` seconds for
the same loop, with a count of what it left out) and carries on with the next round.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable

#: the same loop logs a failing round at most this often (seconds)
LOG_EVERY = 10.0


class RateLimitedLog:
    """Log a recurring problem at most once per ``period`` seconds, saying how many times
    it happened in between (so a flood of refused connections is one line per period)."""

    def __init__(self, log: logging.Logger, period: float = LOG_EVERY) -> None:
        self.log = log
        self.period = period
        self._last = -float("inf")
        self._skipped = 0

    def __call__(self, level: int, msg: str, *args, exc_info=None) -> None:
        now = time.monotonic()
        if now - self._last < self.period:
            self._skipped += 1
            return
        if self._skipped:
            msg += f" (and {self._skipped} more like it in the last {now - self._last:.0f} s)"
        self._last, self._skipped = now, 0
        self.log.log(level, msg, *args, exc_info=exc_info)


async def every(interval: float | Callable[[], float], round_: Callable, *, name: str,
                log: logging.Logger, first_delay: float | None = None) -> None:
    """Run ``round_()`` (a function or a coroutine function) every ``interval`` seconds
    until cancelled. ``interval`` may be a function, read before each wait.

    An exception in one round is logged (rate-limited) and the loop goes on; only
    cancellation ends it. ``first_delay``: wait this long before the first round (default:
    run it at once).

    Examples:
        >>> import asyncio, logging
        >>> rounds = []
        >>> async def main():
        ...     task = asyncio.ensure_future(every(0.01, lambda: rounds.append(1), name="demo",
        ...                                        log=logging.getLogger("demo")))
        ...     await asyncio.sleep(0.05)
        ...     task.cancel()
        >>> asyncio.run(main())
        >>> len(rounds) >= 2
        True
    """
    report = RateLimitedLog(log)
    wait = interval if callable(interval) else (lambda: interval)
    if first_delay:
        await asyncio.sleep(first_delay)
    while True:
        try:
            result = round_()
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            report(logging.ERROR, "a round of %s failed; it goes on", name, exc_info=True)
        await asyncio.sleep(wait())
