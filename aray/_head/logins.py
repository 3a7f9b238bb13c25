"""Who may use the dashboard: logged-in sessions, and a limit on wrong tokens per client
address. Plain data with a clock passed in; no I/O."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable

#: how long a login lasts, in seconds
SESSION_TTL = 12 * 3600.0
#: the most sessions kept at once: a login past this many ends the oldest session
MAX_SESSIONS = 1000
#: wrong tokens one client address may send within LOGIN_WINDOW seconds; then it must wait
LOGIN_FAILURES = 10
LOGIN_WINDOW = 60.0
#: the most client addresses whose failed logins are remembered
MAX_ADDRESSES = 10_000


class Sessions:
    """Logged-in browsers: random session ids, each with its expiry, at most ``limit`` at
    once (a new one past that ends the oldest). No I/O: ``clock`` tells the time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = SESSION_TTL,
                 limit: int = MAX_SESSIONS) -> None:
        self._clock, self.ttl, self._limit = clock, ttl, limit
        self._expiry: OrderedDict[str, float] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._expiry)

    def create(self) -> str:
        """A new session, valid for ``ttl`` seconds; returns its id (256 random bits)."""
        now = self._clock()
        # every session lives as long, so the expired ones are the oldest, at the front
        while self._expiry and next(iter(self._expiry.values())) <= now:
            self._expiry.popitem(last=False)
        session = secrets.token_urlsafe(32)
        self._expiry[session] = now + self.ttl
        while len(self._expiry) > self._limit:
            self._expiry.popitem(last=False)
        return session

    def valid(self, session: str) -> bool:
        """Whether ``session`` is the id of a live session."""
        # a dict lookup of the exact string, not a constant-time compare: the ids are 256
        # random bits, so whatever the lookup's timing tells brings no guess closer
        expiry = self._expiry.get(session)
        if expiry is not None and self._clock() >= expiry:
            del self._expiry[session]
            return False
        return expiry is not None

    def revoke(self, session: str) -> None:
        """End a session (logging out); unknown ids are ignored."""
        self._expiry.pop(session, None)


class TooManyLogins(Exception):
    """An address that failed to log in too often tried again; it may in ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class LoginLimiter:
    """Failed logins per client address, in a sliding window: an address with
    ``max_failures`` failures in the last ``window`` seconds must wait until the oldest of
    them is that old. At most ``max_addresses`` addresses are remembered (the one that failed
    longest ago is forgotten first), so a spray of addresses cannot grow the table. A right
    token does not clear the count: other clients behind the same address (all of loopback)
    would clear it for a guesser. No I/O: ``clock`` tells the time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self._clock, self._max, self._window = clock, max_failures, window
        self._max_addresses = max_addresses
        # address -> the times of its last max_failures failures; least recently failed first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may now."""
        times = self._failures.get(address)
        if times is None or len(times) < self._max:
            return 0.0
        return max(0.0, times[0] + self._window - self._clock())

    def failed(self, address: str) -> None:
        """Count a failed login from ``address``."""
        now = self._clock()
        times = self._failures.pop(address, None) or deque(maxlen=self._max)
        times.append(now)
        # addresses whose last failure is out of the window count for nothing any more
        while self._failures and next(iter(self._failures.values()))[-1] <= now - self._window:
            self._failures.popitem(last=False)
        self._failures[address] = times
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)
