"""Authenticated websocket links between aray processes.

A :class:`Link` wraps one aiohttp websocket. It batches: every message queued with
:meth:`Link.send` during one loop iteration goes out in a single binary frame. Received
frames are decoded by :mod:`aray._protocol` and handed to the owner's ``on_message``; replies
(messages whose class has ``REPLY = True``) resolve the matching :meth:`Link.request`.

Addresses are strings: ``unix:/path/to.sock`` for same-machine links and
``tcp://host:port`` across machines. :func:`serve` starts a server on one of them and
:func:`connect` dials one; both run the :class:`~aray._protocol.Hello` handshake, in which
the token is compared in constant time before any other frame is decoded.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from . import _protocol as P
from . import _tls as tls
from .exceptions import AuthenticationError

log = logging.getLogger("aray.link")

HANDSHAKE_TIMEOUT = 10.0


class Link:
    """One side of an authenticated websocket: batched sends, dispatch, request/reply."""

    def __init__(self, ws, peer: P.Hello | P.Welcome, name: str = "", session=None) -> None:
        self._ws = ws
        self._session = session  # the client session to close with the link (client side)
        self.peer = peer
        self.name = name
        self.closed = False
        self.on_message: Callable[[Link, Any], None] = lambda link, msg: None
        self.on_close: list[Callable[[Link], None]] = []
        self._outbox: list = []
        self._wakeup = asyncio.Event()
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._writer_task: asyncio.Task | None = None
        self.state: dict = {}  # owner-specific per-link data (e.g. functions already sent)

    def send_if_open(self, msg) -> None:
        """Queue a message unless the link has closed (the peer is gone: nobody to tell)."""
        if not self.closed:
            self.send(msg)

    def send(self, msg) -> None:
        """Queue a message; it leaves with everything else queued in this loop iteration."""
        if self.closed:
            raise ConnectionError(f"link {self.name} is closed")
        self._outbox.append(msg)
        self._wakeup.set()

    @property
    def queued(self) -> int:
        """How many messages wait for the writer: more than a few means the peer reads
        slower than this side sends."""
        return len(self._outbox)

    def next_id(self) -> int:
        return next(self._ids)

    async def request(self, make: Callable[[int], Any]):
        """Send ``make(req_id)`` and wait for the reply that carries the same ``req_id``."""
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            self.send(make(req_id))
            return await fut
        finally:
            self._pending.pop(req_id, None)

    async def run(self) -> None:
        """Pump frames until the socket closes; then fail pending requests and notify owners."""
        self._writer_task = asyncio.create_task(self._write_loop(), name=f"link-writer {self.name}")
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.BINARY:
                    if frame.type == aiohttp.WSMsgType.ERROR:
                        log.debug("link %s error: %s", self.name, self._ws.exception())
                    if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                      aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
                    continue
                for msg in P.decode(frame.data):
                    if msg.REPLY:
                        fut = self._pending.get(msg.req_id)
                        if fut is not None and not fut.done():
                            fut.set_result(msg)
                        continue
                    try:
                        self.on_message(self, msg)
                    except Exception:
                        log.exception("error handling %s on link %s", type(msg).__name__, self.name)
        except ValueError as exc:  # a malformed frame ends the link, not the process
            log.warning("closing link %s: %s", self.name, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self._shutdown()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                batch, self._outbox = self._outbox, []
                if batch:
                    await self._ws.send_bytes(P.encode(batch))
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            await self._ws.close()

    async def _shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._writer_task is not None:
            # let queued messages leave before the socket closes
            if self._outbox and not self._ws.closed:
                try:
                    await self._ws.send_bytes(P.encode(self._outbox))
                except Exception:
                    pass
            self._writer_task.cancel()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"link {self.name} closed"))
        for callback in self.on_close:
            try:
                callback(self)
            except Exception:
                log.exception("error in on_close of link %s", self.name)
        try:
            if not self._ws.closed:
                await self._ws.close()
        finally:  # even when cancelled while closing: the session must not leak
            if self._session is not None:
                await self._session.close()

    async def aclose(self) -> None:
        """Flush what is queued, close the websocket and release the link's resources."""
        await self._shutdown()


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


HandlerT = Callable[[Link, P.Hello], Awaitable[dict] | dict]


class Server:
    """An aiohttp app that accepts links on ``/link`` after a good Hello.

    ``on_hello(link, hello)`` is called for each authenticated peer; it wires the link
    (sets ``on_message``/``on_close``) and returns the dict sent back in the Welcome.
    Extra routes (dashboard, JSON API) can be added to :attr:`app` before :meth:`start`.
    """

    def __init__(self, token: str, on_hello: HandlerT, name: str = "server") -> None:
        self.token = token
        self.on_hello = on_hello
        self.name = name
        self.app = web.Application()
        self.app.router.add_get("/link", self._ws_handler)
        self._runner: web.AppRunner | None = None
        self.address = ""
        self.links: set[Link] = set()
        self._socket_files: list[str] = []

    async def start(self, address: str, sock: socket.socket | None = None) -> str:
        """Listen on ``address`` (more with :meth:`listen`); returns the bound address."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self.address = await self.listen(address, sock)
        return self.address

    async def listen(self, address: str, sock: socket.socket | None = None) -> str:
        """Also accept links on ``address``; returns it with the port actually bound.

        ``sock``: a TCP socket already bound to ``address`` (see :func:`bind_tcp`).
        """
        assert self._runner is not None, "start() the server first"
        if sock is not None:
            await web.SockSite(self._runner, sock, ssl_context=tls.server_context()).start()
            return address
        kind, host, port = parse_address(address)
        if kind == "unix":
            site = web.UnixSite(self._runner, host)
            await site.start()
            os.chmod(host, 0o600)
            self._socket_files.append(host)
            return address
        # reuse_address: a restarted head may bind while old connections sit in TIME-WAIT
        # (Linux still refuses a second listener on the port)
        site = web.TCPSite(self._runner, host, port, reuse_address=True,
                           ssl_context=tls.server_context())
        try:
            await site.start()
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"tcp://{host}:{bound}"

    async def _ws_handler(self, request: web.Request):
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=HANDSHAKE_TIMEOUT)
        except asyncio.TimeoutError:
            await ws.close(code=P.CLOSE_BAD_HELLO, message=b"no hello")
            return ws
        hello = _check_hello(first, self.token)
        if not isinstance(hello, P.Hello):
            code, reason = hello
            log.warning("%s refused a link from %s: %s", self.name, request.remote, reason)
            await ws.close(code=code, message=reason.encode())
            return ws
        link = Link(ws, hello, name=f"{self.name}<-{hello.role}:{hello.ident}")
        info = self.on_hello(link, hello)
        if asyncio.iscoroutine(info):
            info = await info
        await ws.send_bytes(P.encode([P.Welcome(P.PROTOCOL_VERSION, info or {})]))
        self.links.add(link)
        try:
            await link.run()
        finally:
            self.links.discard(link)
        return ws

    async def aclose(self) -> None:
        for link in list(self.links):
            await link.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for path in self._socket_files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._socket_files = []


def _check_hello(frame, token: str) -> P.Hello | tuple[int, str]:
    """Validate the first frame without unpickling anything; a tuple means refuse."""
    if frame.type != aiohttp.WSMsgType.BINARY:
        return P.CLOSE_BAD_HELLO, "expected a Hello frame"
    try:
        msgs = P.decode(frame.data)
    except ValueError:
        return P.CLOSE_BAD_HELLO, "malformed Hello frame"
    if len(msgs) != 1 or not isinstance(msgs[0], P.Hello):
        return P.CLOSE_BAD_HELLO, "expected a Hello frame"
    hello = msgs[0]
    if not isinstance(hello.token, str) or not hmac.compare_digest(
        hello.token.encode(), token.encode()
    ):
        return P.CLOSE_BAD_TOKEN, "wrong cluster token"
    if hello.version != P.PROTOCOL_VERSION:
        return P.CLOSE_BAD_VERSION, (
            f"protocol version {hello.version} does not match the cluster's {P.PROTOCOL_VERSION}"
        )
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


async def connect(address: str, hello: P.Hello, name: str = "", timeout: float = 10.0) -> Link:
    """Dial ``address``, run the handshake and return a :class:`Link` (not yet running).

    The caller sets ``on_message`` and then runs ``link.run()`` in a task it owns.
    """
    kind, host, port = parse_address(address)
    if kind == "unix":
        connector = aiohttp.UnixConnector(path=host)
        url = "http://localhost/link"
    else:
        context = tls.client_context()
        connector = aiohttp.TCPConnector(ssl=context if context is not None else False)
        url = f"{'https' if context is not None else 'http'}://{host}:{port}/link"
    session = aiohttp.ClientSession(connector=connector)
    try:
        async with asyncio.timeout(timeout):
            ws = await session.ws_connect(url, max_msg_size=0, autoping=True)
            await ws.send_bytes(P.encode([hello]))
            reply = await ws.receive()
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        await session.close()
        reason = exc or type(exc).__name__
        raise ConnectionError(f"cannot reach aray at {address}: {reason}") from None
    except BaseException:  # cancelled while dialling
        await session.close()
        raise
    if reply.type == aiohttp.WSMsgType.BINARY:
        msgs = P.decode(reply.data)
        if msgs and isinstance(msgs[0], P.Welcome):
            return Link(ws, msgs[0], name=name or address, session=session)
    await session.close()
    code = ws.close_code
    reason = (ws.extra or "") if hasattr(ws, "extra") else ""
    if code == P.CLOSE_BAD_TOKEN:
        raise AuthenticationError(
            f"aray at {address} refused the connection: wrong cluster token. "
            "Pass the cluster's token (aray.init(token=...) or ARAY_TOKEN)."
        )
    if code == P.CLOSE_BAD_VERSION:
        raise ConnectionError(f"aray at {address} speaks another protocol version")
    raise ConnectionError(f"aray at {address} closed the connection during the handshake {reason}")
