"""Authenticated websocket links between aray processes.

A :class:`Link` wraps one aiohttp websocket. It batches: every message queued with
:meth:`Link.send` during one loop iteration goes out in a single binary frame. Received
frames are decoded by :mod:`aray._protocol` and handed to the owner's ``on_message``; replies
(messages whose class has ``REPLY = True``) resolve the matching :meth:`Link.request`.

Links fail loudly:

* a request gets exactly one answer: its reply; a :class:`~aray._protocol.RequestFailed`
  carrying the handler's exception, raised at the caller as
  :class:`~aray.exceptions.AraySystemError`; or, when the link closes, a ``ConnectionError``
  that names the peer. ``request`` takes a deadline, and every caller states one (or says
  why it needs none);
* any exception in the writer (a message that will not encode, a frame too large) closes
  the link and fails what is pending on it; a peer that reads nothing for
  :data:`STALL_TIMEOUT` seconds while :data:`OUTBOX_LIMIT` messages wait is cut off;
* a handler may return an awaitable: the link runs it in a task of its own (cancelled when
  the link closes) and sends the error reply if it raises.

Addresses are strings: ``unix:/path/to.sock`` for same-machine links and
``tcp://host:port`` across machines. :func:`serve` starts a server on one of them and
:func:`connect` dials one. The handshake is the HTTP upgrade itself: the client's
:class:`~aray._protocol.Hello` (protocol version, token, role) rides in one small request
header, which the server checks, the token in constant time, before it upgrades; nothing
else an unauthenticated peer sends is read. A server holds at most
:data:`MAX_UNAUTHENTICATED` connections per listener that have not passed the handshake,
and closes each that has not within :data:`HANDSHAKE_TIMEOUT` seconds (slowloris).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hmac
import inspect
import itertools
import logging
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from . import _protocol as P
from . import _tls as tls
from ._netaddr import DialResolver
from ._periodic import RateLimitedLog
from .exceptions import AraySystemError, AuthenticationError, RequestTimeoutError

log = logging.getLogger("aray.link")

#: seconds a new connection has to pass the handshake (TCP, TLS and HTTP upgrade included)
HANDSHAKE_TIMEOUT = 10.0
#: connections per listener that have not passed the handshake; more are dropped at once
MAX_UNAUTHENTICATED = 128
#: the largest frame an authenticated peer may send (a batch is split below this)
MAX_FRAME = 1 << 30
#: batches that encode larger than this go out as several frames
FRAME_SPLIT = 32 << 20
#: a link whose peer has read nothing for this long while OUTBOX_LIMIT messages wait is closed
STALL_TIMEOUT = 60.0
OUTBOX_LIMIT = 10_000
#: closing a link waits this long for the peer's close frame
CLOSE_TIMEOUT = 2.0
#: the deadline of requests to peers that answer at once (control messages)
CONTROL_TIMEOUT = 30.0
#: the deadline of one chunk of an object copied between nodes
CHUNK_TIMEOUT = 60.0


class Link:
    """One side of an authenticated websocket: batched sends, dispatch, request/reply."""

    def __init__(self, ws, peer: P.Hello | P.Welcome, name: str = "", session=None,
                 transport: asyncio.Transport | None = None) -> None:
        self._ws = ws
        self._session = session  # the client session to close with the link (client side)
        self._transport = transport  # (server side) aborted if closing cannot finish
        self.peer = peer
        self.name = name
        self.closed = False
        self.close_reason = ""
        self.on_message: Callable[[Link, Any], Any] = lambda link, msg: None
        self.on_close: list[Callable[[Link], None]] = []
        self._outbox: list = []
        self._wakeup = asyncio.Event()
        self._pending: dict[int, tuple[asyncio.Future, str]] = {}
        self._ids = itertools.count(1)
        self._writer_task: asyncio.Task | None = None
        self._handler_tasks: set[asyncio.Task] = set()
        self._sending_since: float | None = None  # when the frame being written started
        self._closing_task: asyncio.Task | None = None
        self.stall_timeout = STALL_TIMEOUT
        self.state: dict = {}  # owner-specific per-link data (e.g. functions already sent)

    @property
    def peer_role(self) -> str:
        """What the process at the other end is: "head", "node" (an agent), "driver",
        "worker" or "core" (any core dialling another). A server learns it from the peer's
        Hello, a client from the server's Welcome."""
        if isinstance(self.peer, P.Hello):
            return self.peer.role
        return self.peer.info.get("role", "") if isinstance(self.peer.info, dict) else ""

    @property
    def peer_node(self) -> str:
        """The node id of the process at the other end, when it said (else "")."""
        return self.peer.info.get("node_id", "") if isinstance(self.peer.info, dict) else ""

    def send_if_open(self, msg) -> None:
        """Queue a message unless the link has closed (the peer is gone: nobody to tell)."""
        if not self.closed:
            self.send(msg)

    def send(self, msg) -> None:
        """Queue a message; it leaves with everything else queued in this loop iteration.

        Raises ConnectionError when the link is closed, or when the peer has read nothing
        for STALL_TIMEOUT seconds with OUTBOX_LIMIT messages waiting (then the link closes).
        """
        if self.closed:
            raise ConnectionError(f"link {self.name} is closed{self._why()}")
        outbox = self._outbox
        if len(outbox) >= OUTBOX_LIMIT and self._stalled():
            self.abort(f"the peer has read nothing for {self.stall_timeout:g} s with "
                       f"{len(outbox)} messages queued")
            raise ConnectionError(f"link {self.name} is closed{self._why()}")
        outbox.append(msg)
        if len(outbox) == 1:
            self._wakeup.set()

    def _stalled(self) -> bool:
        since = self._sending_since
        return since is not None and time.monotonic() - since > self.stall_timeout

    def _why(self) -> str:
        return f" ({self.close_reason})" if self.close_reason else ""

    @property
    def queued(self) -> int:
        """How many messages wait for the writer: more than a few means the peer reads
        slower than this side sends."""
        return len(self._outbox)

    def next_id(self) -> int:
        return next(self._ids)

    async def request(self, make: Callable[[int], Any], *, timeout: float | None):
        """Send ``make(req_id)`` and wait for the reply that carries the same ``req_id``.

        ``timeout``: seconds to wait for the reply, or None for requests whose answer may
        take as long as the work it waits for (each such caller says why it cannot hang).
        Raises :class:`~aray.exceptions.RequestTimeoutError` (a ``ConnectionError`` and a
        ``TimeoutError``) when the deadline passes, ``ConnectionError`` when the link closes,
        and :class:`~aray.exceptions.AraySystemError` when the peer's handler failed.
        """
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        msg = make(req_id)
        self._pending[req_id] = (fut, type(msg).__name__)
        try:
            self.send(msg)
            if timeout is None:
                reply = await fut
            else:
                try:
                    async with asyncio.timeout(timeout):
                        reply = await fut
                except TimeoutError:
                    raise RequestTimeoutError(
                        f"{self.name}: no answer to {type(msg).__name__} within {timeout:g} s; "
                        "the peer is hung or overloaded") from None
        finally:
            self._pending.pop(req_id, None)
        if isinstance(reply, P.RequestFailed):
            raise AraySystemError(
                f"{self.name}: the peer failed while handling {type(msg).__name__}: "
                f"{reply.error}\n\nIts traceback:\n{reply.traceback.rstrip()}")
        return reply

    async def run(self) -> None:
        """Pump frames until the socket closes; then fail pending requests and notify owners."""
        self._writer_task = asyncio.create_task(self._write_loop(), name=f"link-writer {self.name}")
        reason = "the peer closed the link"
        try:
            async for frame in self._ws:
                if self.closed:  # aborted: what the peer says now is not heard
                    break
                if frame.type != aiohttp.WSMsgType.BINARY:
                    if frame.type == aiohttp.WSMsgType.ERROR:
                        reason = f"receive failed: {self._ws.exception()}"
                        log.warning("closing link %s: %s", self.name, reason)
                    if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                      aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
                    continue
                for msg in P.decode(frame.data):
                    if msg.REPLY:
                        pending = self._pending.get(msg.req_id)
                        if pending is not None and not pending[0].done():
                            pending[0].set_result(msg)
                        continue
                    self._deliver(msg)
        except ValueError as exc:  # a malformed frame ends the link, not the process
            reason = str(exc)
            log.warning("closing link %s: %s", self.name, exc)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            reason = f"connection lost: {exc}"
        finally:
            await self._close(reason, flush=True)

    def _deliver(self, msg) -> None:
        """Hand one message to the owner; a failing handler gets the requester an error
        reply (and is logged), and an awaitable it returns runs in a task of this link."""
        try:
            result = self.on_message(self, msg)
        except Exception as exc:
            self._handler_failed(msg, exc)
            return
        if result is not None and inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(functools.partial(self._handler_done, msg))

    def _handler_done(self, msg, task: asyncio.Task) -> None:
        self._handler_tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self._handler_failed(msg, exc)

    def _handler_failed(self, msg, exc: BaseException) -> None:
        log.error("error handling %s on link %s", type(msg).__name__, self.name,
                  exc_info=(type(exc), exc, exc.__traceback__))
        req_id = getattr(msg, "req_id", 0) if msg.REQUEST else 0
        if req_id and not self.closed:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.send(P.RequestFailed(req_id, f"{type(exc).__name__}: {exc}", text))

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._outbox:
                    batch, self._outbox = self._outbox, []
                    for frame in _frames(batch):
                        self._sending_since = time.monotonic()
                        await self._ws.send_bytes(frame)
                    self._sending_since = None
        except asyncio.CancelledError:
            raise
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            self.abort(f"sending failed: {exc}")  # the socket went away under us
        except Exception as exc:  # a message that will not encode, a frame too large: a bug
            log.error("closing link %s: its writer failed", self.name, exc_info=True)
            self.abort(f"its writer failed: {type(exc).__name__}: {exc}")

    def abort(self, reason: str) -> None:
        """Close the link now, without sending what is queued: fail every pending request
        with a ConnectionError naming the peer and ``reason``, tell the owners, and close
        the socket in the background (a hung peer cannot hold this up)."""
        if not self.closed:
            self._mark_closed(reason)
            self._closing_task = asyncio.ensure_future(self._close_socket([]))

    async def _close(self, reason: str, flush: bool) -> None:
        if not self.closed:
            queued = self._mark_closed(reason)
            await self._close_socket(queued if flush else [])

    def _mark_closed(self, reason: str) -> list:
        """The link is closed from now on: what waits on it fails, its owners hear of it.
        Returns what was queued and not sent."""
        self.closed = True
        self.close_reason = reason
        writer, current = self._writer_task, asyncio.current_task()
        if writer is not None and writer is not current:
            writer.cancel()
        queued, self._outbox = self._outbox, []
        for fut, what in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(
                    f"link {self.name} closed before {what} was answered: {reason}"))
        for task in list(self._handler_tasks):
            task.cancel()
        for callback in self.on_close:
            try:
                callback(self)
            except Exception:
                log.exception("error in on_close of link %s", self.name)
        return queued

    async def _close_socket(self, queued: list) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if queued and not self._ws.closed:  # what was said before the end
                    await self._ws.send_bytes(P.encode(queued))
                if not self._ws.closed:
                    await self._ws.close()
        except Exception:  # a peer that does not read (or has gone): drop the connection
            if self._transport is not None:
                self._transport.abort()
        finally:  # even when cancelled while closing: the session must not leak
            if self._session is not None:
                await self._session.close()

    async def aclose(self) -> None:
        """Flush what is queued, close the websocket and release the link's resources."""
        if self._closing_task is not None:  # aborted: wait for the socket to go
            await asyncio.wait([self._closing_task])
        await self._close("closed by this side", flush=True)


def _frames(batch: list) -> list[bytes]:
    """The frames a batch of messages goes out in: one, unless it encodes larger than
    FRAME_SPLIT (then halves, recursively). Raises on a message that will not encode,
    naming it, or that is larger than MAX_FRAME alone."""
    try:
        data = P.encode(batch)
    except Exception as exc:
        bad = next((m for m in batch if not _encodes(m)), None)
        raise ValueError(f"cannot encode {type(bad).__name__ if bad else 'a message'}: "
                         f"{exc}") from exc
    if len(data) <= FRAME_SPLIT:
        return [data]
    if len(batch) == 1:
        if len(data) > MAX_FRAME:
            raise ValueError(f"a {type(batch[0]).__name__} of {len(data)} bytes is larger "
                             f"than the largest frame ({MAX_FRAME} bytes)")
        return [data]
    half = len(batch) // 2
    return _frames(batch[:half]) + _frames(batch[half:])


def _encodes(msg) -> bool:
    try:
        P.encode([msg])
        return True
    except Exception:
        return False


# --- addresses ----------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, str, int]:
    """``unix:/p`` -> ("unix", "/p", 0); ``tcp://h:p`` or ``h:p`` -> ("tcp", h, p)."""
    if address.startswith("unix:"):
        return "unix", address[5:], 0
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(
            f"bad address {address!r}: expected HOST:PORT (e.g. 127.0.0.1:6379) or unix:/path"
        )
    return "tcp", host.strip("[]"), int(port)


# --- server -----------------------------------------------------------------------------


HandlerT = Callable[["Link", P.Hello], Awaitable[dict] | dict]


class GuardedServer(web.Server):
    """aiohttp's low-level server, plus a watch on connections that have not passed the
    handshake: at most ``limit`` per kind of listener (TCP, unix), each closed after
    ``deadline`` seconds unless :meth:`trust` was called for it. (Link servers trust a
    connection once its Hello is good; the dashboard once a whole request has arrived.)"""

    def __init__(self, handler, *, limit: int, deadline: float, refused: Callable[[str], None],
                 **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self._limit = limit
        self._deadline = deadline
        self._refused = refused
        self._untrusted: dict[asyncio.BaseTransport, tuple[str, asyncio.TimerHandle]] = {}
        self._counts = {"tcp": 0, "unix": 0}

    def connection_made(self, handler, transport) -> None:
        super().connection_made(handler, transport)
        # a unix socket's address is its path, a TCP socket's a (host, port) tuple
        kind = "unix" if isinstance(transport.get_extra_info("sockname"), str) else "tcp"
        if self._counts[kind] >= self._limit:
            self._refused(f"more than {self._limit} connections waiting to authenticate")
            # not at once: aiohttp's handler task for it, created after this returns, must
            # start before the connection is lost
            self._loop.call_soon(transport.abort)
            return
        self._counts[kind] += 1
        timer = self._loop.call_later(self._deadline, self._expire, transport)
        self._untrusted[transport] = (kind, timer)

    def connection_lost(self, handler, exc=None) -> None:
        transport = self._connections.get(handler)
        if transport is not None:
            self._forget(transport)
        super().connection_lost(handler, exc)

    def trust(self, transport) -> None:
        """This connection passed the handshake: no deadline, and it no longer counts."""
        self._forget(transport)

    def _forget(self, transport) -> None:
        entry = self._untrusted.pop(transport, None)
        if entry is not None:
            self._counts[entry[0]] -= 1
            entry[1].cancel()

    def _expire(self, transport) -> None:
        if transport in self._untrusted:
            self._forget(transport)
            self._refused(f"no handshake within {self._deadline:g} s")
            transport.abort()


class Server:
    """A link server: accepts links on ``/link`` after a good Hello.

    ``on_hello(link, hello)`` is called for each authenticated peer; it wires the link
    (sets ``on_message``/``on_close``) and returns the dict sent back in the Welcome (or
    raises to refuse the peer, with the exception's message as the reason).
    ``quiet``: log refused connections at INFO instead of WARNING (a worker's log is its
    user's terminal, which strangers knocking on a port must not fill).
    ``handshake_timeout`` and ``max_unauthenticated``: see :data:`HANDSHAKE_TIMEOUT` and
    :data:`MAX_UNAUTHENTICATED`. ``role``: what this server's process is, for its clients
    (see :attr:`Link.peer_role`).
    """

    def __init__(self, token: str, on_hello: HandlerT, name: str = "server",
                 quiet: bool = False, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 max_unauthenticated: int = MAX_UNAUTHENTICATED, role: str = "") -> None:
        self.token = token
        self.role = role  # told to every client in the Welcome: "head", "node" or "core"
        self.handshake_timeout = handshake_timeout
        self.max_unauthenticated = max_unauthenticated
        self.on_hello = on_hello
        self.name = name
        self._refusals = RateLimitedLog(log)
        self._refusal_level = logging.INFO if quiet else logging.WARNING
        self._web: GuardedServer | None = None
        self._listeners: list[asyncio.AbstractServer] = []
        self.address = ""
        self.links: set[Link] = set()
        self._socket_files: list[str] = []
        #: unauthenticated health checks (path -> the status and text it answers), for
        #: Kubernetes' probes: see aray._health. They must reveal nothing.
        self.probes: dict[str, Callable[[], tuple[int, str]]] = {}

    def _refused(self, reason: str, peer: str = "") -> None:
        self._refusals(self._refusal_level, "%s refused a connection%s: %s", self.name,
                       f" from {peer}" if peer else "", reason)

    async def start(self, address: str, sock: socket.socket | None = None) -> str:
        """Listen on ``address`` (more with :meth:`listen`); returns the bound address."""
        self._web = GuardedServer(
            self._handle, limit=self.max_unauthenticated, deadline=self.handshake_timeout,
            refused=self._refused, access_log=None,
            # the request line and headers of the upgrade are all an unauthenticated
            # peer may send: a few KiB
            max_line_size=2048, max_field_size=P.HELLO_HEADER_MAX + 64, max_headers=32)
        self.address = await self.listen(address, sock)
        return self.address

    async def listen(self, address: str, sock: socket.socket | None = None) -> str:
        """Also accept links on ``address``; returns it with the port actually bound.

        ``sock``: a TCP socket already bound to ``address`` (see :func:`bind_tcp`).
        """
        assert self._web is not None, "start() the server first"
        loop = asyncio.get_running_loop()
        ssl = tls.server_context()
        tls_deadline: dict[str, Any] = (
            {"ssl_handshake_timeout": self.handshake_timeout} if ssl else {})
        if sock is not None:
            server = await loop.create_server(self._web, sock=sock, ssl=ssl, **tls_deadline)
            self._listeners.append(server)
            return address
        kind, host, port = parse_address(address)
        if kind == "unix":
            server = await loop.create_unix_server(self._web, host)
            os.chmod(host, 0o600)
            self._listeners.append(server)
            self._socket_files.append(host)
            return address
        # reuse_address: a restarted head may bind while old connections sit in TIME-WAIT
        # (Linux still refuses a second listener on the port)
        try:
            server = await loop.create_server(self._web, host, port, reuse_address=True,
                                              ssl=ssl, **tls_deadline)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self._listeners.append(server)
        bound = server.sockets[0].getsockname()[1]
        return f"tcp://{host}:{bound}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        peer = request.remote or "a local process"
        probe = self.probes.get(request.path)
        if probe is not None and request.method in ("GET", "HEAD"):
            status, text = probe()
            return web.Response(status=status, text=text)
        if request.path != "/link" or request.method != "GET":
            self._refused(f"{request.method} {request.path[:64]!r} is not a link", peer)
            return web.Response(status=404, reason="Not Found")
        if request.content_length or "Transfer-Encoding" in request.headers:
            self._refused("a link request carries no body", peer)
            return web.Response(status=400, reason="Bad Request")
        hello = _check_hello(request.headers.get(P.HELLO_HEADER, ""), self.token)
        if not isinstance(hello, P.Hello):
            status, reason = hello
            self._refused(reason, peer)
            return web.Response(status=status, reason=reason)
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, compress=False,
                                   timeout=CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            self._refused("not a websocket upgrade", peer)
            return web.Response(status=400, reason="Bad Request")
        link = Link(ws, hello, name=f"{self.name}<-{hello.role}:{hello.ident}",
                    transport=request.transport)
        try:
            info = self.on_hello(link, hello)
            if inspect.isawaitable(info):
                info = await info
        except Exception as exc:
            log.warning("%s refused %s %s: %s", self.name, hello.role, hello.ident, exc)
            await link._close(f"refused: {exc}", flush=False)
            return web.Response(status=403, reason=_reason(str(exc)))
        try:
            await ws.prepare(request)
            if request.transport is not None:
                assert self._web is not None
                self._web.trust(request.transport)
            welcome = dict(info or {}, role=self.role) if self.role else (info or {})
            await ws.send_bytes(P.encode([P.Welcome(P.PROTOCOL_VERSION, welcome)]))
        except BaseException:
            await link._close("the handshake did not finish", flush=False)
            raise
        self.links.add(link)
        try:
            await link.run()
        finally:
            self.links.discard(link)
        return ws

    async def aclose(self) -> None:
        for listener in self._listeners:
            listener.close()
        for link in list(self.links):
            await link.aclose()
        if self._web is not None:
            self._web.pre_shutdown()
            await self._web.shutdown(CLOSE_TIMEOUT)
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners = []
        for path in self._socket_files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._socket_files = []


def _reason(text: str) -> str:
    """An HTTP reason phrase: one line of printable ASCII."""
    return "".join(c if 32 <= ord(c) < 127 else " " for c in text)[:200] or "Refused"


def _check_hello(header: str, token: str) -> P.Hello | tuple[int, str]:
    """Validate the Hello header without unpickling anything; a tuple means refuse."""
    if not header:
        return 400, "no Hello: not an aray client"
    try:
        hello = P.decode_hello(header)
    except ValueError:
        return 400, "malformed Hello"
    if not isinstance(hello.token, str) or not hmac.compare_digest(
        hello.token.encode(), token.encode()
    ):
        return 401, "wrong cluster token"
    if hello.version != P.PROTOCOL_VERSION:
        return 409, (f"protocol version {hello.version} does not match the cluster's "
                     f"{P.PROTOCOL_VERSION}")
    return hello


def bind_tcp(host: str) -> tuple[socket.socket, str]:
    """A TCP socket bound to a free port of ``host`` and its ``tcp://`` address: a process
    knows the address others will reach it at before its server runs."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, 0))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}: {exc.strerror}") from None
    return sock, f"tcp://{host}:{sock.getsockname()[1]}"


# --- client -----------------------------------------------------------------------------

#: a server that drops a new connection (it holds too many unauthenticated ones) is
#: dialled again after this many seconds, doubling, until the connect timeout
RETRY_DELAY = 0.05


async def connect(address: str, hello: P.Hello, name: str = "", timeout: float = 10.0) -> Link:
    """Dial ``address``, run the handshake and return a :class:`Link` (not yet running).

    The caller sets ``on_message`` and then runs ``link.run()`` in a task it owns.
    """
    kind, host, port = parse_address(address)
    header = P.encode_hello(hello)
    deadline = time.monotonic() + timeout
    delay = RETRY_DELAY
    while True:
        try:
            return await _dial(kind, host, port, address, header, hello.role, name,
                               max(0.1, deadline - time.monotonic()))
        except _Dropped as exc:
            if time.monotonic() + delay > deadline:
                raise ConnectionError(f"cannot reach aray at {address}: {exc}") from None
            await asyncio.sleep(delay)
            delay *= 2


class _Dropped(Exception):
    """The server accepted the connection and dropped it before answering."""


async def _dial(kind: str, host: str, port: int, address: str, header: str, role: str,
                name: str, timeout: float) -> Link:
    if kind == "unix":
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=host)
        url = "http://localhost/link"
    else:
        context = tls.client_context()
        # a name (a head's Service) is resolved at each dial: see aray._netaddr
        connector = aiohttp.TCPConnector(ssl=context if context is not None else False,
                                         resolver=DialResolver())
        url = f"{'https' if context is not None else 'http'}://{host}:{port}/link"
    session = aiohttp.ClientSession(connector=connector)
    try:
        async with asyncio.timeout(timeout):
            ws = await session.ws_connect(
                url, headers={P.HELLO_HEADER: header}, max_msg_size=MAX_FRAME, autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT))
            reply = await ws.receive()
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        if exc.status == 401:
            raise AuthenticationError(
                f"aray at {address} refused the connection: wrong cluster token. "
                "Pass the cluster's token (aray.init(token=...) or ARAY_TOKEN).") from None
        if exc.status == 409:
            raise ConnectionError(f"aray at {address} speaks another protocol version: "
                                  f"{exc.message}") from None
        raise ConnectionError(f"aray at {address} refused the connection ({exc.status} "
                              f"{exc.message})") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        await session.close()
        if isinstance(exc, aiohttp.ClientConnectorError) and not _reset(exc):
            raise ConnectionError(f"cannot reach aray at {address}: {exc}") from None
        raise _Dropped(str(exc) or type(exc).__name__) from None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        await session.close()
        reason = exc or type(exc).__name__
        raise ConnectionError(f"cannot reach aray at {address}: {reason}") from None
    except BaseException:  # cancelled while dialling
        await session.close()
        raise
    if reply.type == aiohttp.WSMsgType.BINARY:
        try:
            msgs = P.decode(reply.data)
        except ValueError:
            msgs = []
        if msgs and isinstance(msgs[0], P.Welcome):
            return Link(ws, msgs[0], name=name or address, session=session)
    await session.close()
    raise ConnectionError(f"aray at {address} closed the connection during the handshake "
                          f"({role} hello answered by {reply.type.name})")


def _reset(exc: OSError) -> bool:
    return getattr(exc, "errno", None) in (errno.ECONNRESET, errno.EPIPE)


async def ask(address: str, token: str, make: Callable[[int], Any], *, name: str = "ask",
              timeout: float = CONTROL_TIMEOUT):
    """One request to a head or node agent over a short-lived authenticated link (for the
    CLI and the state API outside a program's own runtime); returns the reply."""
    hello = P.Hello(P.PROTOCOL_VERSION, token, "core", name, os.getpid(), {})
    link = await connect(address, hello, name=name)
    task = asyncio.ensure_future(link.run())
    try:
        return await link.request(make, timeout=timeout)
    finally:
        await link.aclose()
        await task
