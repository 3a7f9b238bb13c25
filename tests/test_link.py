"""Links over real unix sockets: the handshake, request/reply, and what a bad peer gets."""

import asyncio
import os

import aiohttp
import pytest
from conftest import async_wait_until

from aray import _protocol as P
from aray._link import Server, connect, parse_address
from aray.exceptions import AuthenticationError

pytestmark = pytest.mark.anyio


def hello(token="secret"):
    return P.Hello(P.PROTOCOL_VERSION, token, "core", "test", os.getpid(), {})


@pytest.fixture
async def server(tmp_path):
    received = []

    def on_hello(link, h):
        def on_message(link, msg):
            received.append(msg)
            if isinstance(msg, P.GetClusterState):
                link.send(P.ClusterState(msg.req_id, [{"n": 1}]))

        link.on_message = on_message
        return {"hi": "there"}

    srv = Server("secret", on_hello, name="test")
    await srv.start(f"unix:{tmp_path}/s.sock")
    srv.received = received
    yield srv
    await srv.aclose()


async def test_handshake_and_request_reply(server):
    link = await connect(server.address, hello())
    task = asyncio.ensure_future(link.run())
    assert link.peer.info == {"hi": "there"}
    reply = await link.request(lambda r: P.GetClusterState(r), timeout=5)
    assert reply.nodes == [{"n": 1}]
    for i in range(50):
        link.send(P.ReturnLease(str(i)))
    await async_wait_until(
        lambda: sum(isinstance(m, P.ReturnLease) for m in server.received) == 50, 5,
        message="the server to receive the 50 messages")
    assert [m.worker_id for m in server.received if isinstance(m, P.ReturnLease)] == [
        str(i) for i in range(50)]
    await link.aclose()
    await task


async def test_wrong_and_missing_token_are_refused(server):
    with pytest.raises(AuthenticationError, match="wrong cluster token"):
        await connect(server.address, hello("not-the-token"))
    with pytest.raises(AuthenticationError):
        await connect(server.address, hello(""))
    assert server.received == []


async def test_garbage_and_unauthenticated_pickles_are_refused(server):
    """A raw client sending junk or a pickle instead of a Hello is refused before the
    upgrade; nothing is unpickled."""
    marker = server.address[5:] + ".pwned"
    import base64
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (marker, "w"))

    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=server.address[5:])) as s:
        for header in (None, "\xff garbage", base64.b64encode(pickle.dumps(Evil())).decode(),
                       base64.b64encode(P.encode([P.PushTask(
                           b"t", b"f", pickle.dumps(Evil()), "n", b"", [], [], 1, "", [],
                           "", {}, "", 0, {})])).decode()):
            headers = {} if header is None else {P.HELLO_HEADER: header}
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect("http://localhost/link", headers=headers)
            assert info.value.status == 400
    assert not os.path.exists(marker)
    assert server.received == []
    # and the server keeps serving good clients
    link = await connect(server.address, hello())
    task = asyncio.ensure_future(link.run())
    assert (await link.request(lambda r: P.GetClusterState(r), timeout=5)).nodes == [{"n": 1}]
    await link.aclose()
    await task


async def test_no_server_is_a_clear_connection_error(tmp_path):
    with pytest.raises(ConnectionError, match="cannot reach aray"):
        await connect(f"unix:{tmp_path}/nothing.sock", hello())


def test_parse_address():
    assert parse_address("unix:/a/b") == ("unix", "/a/b", 0)
    assert parse_address("127.0.0.1:6379") == ("tcp", "127.0.0.1", 6379)
    assert parse_address("aray://h:1") == ("tcp", "h", 1)
    with pytest.raises(ValueError, match="bad address"):
        parse_address("nonsense")


# --- failures: every request gets one answer, every failure closes the link loudly ------


@pytest.fixture
async def faulty(tmp_path):
    """A server whose handlers fail in each of the ways a handler can."""

    def on_hello(link, h):
        def on_message(link, msg):
            if isinstance(msg, P.GetClusterState):
                raise KeyError("no such table")  # a handler that raises
            if isinstance(msg, P.GetStoreStats):
                async def later():
                    await asyncio.sleep(0)
                    raise RuntimeError("failed later")
                return later()  # an async handler that raises
            if isinstance(msg, P.ListLogs):
                return None  # a handler that never replies
            if isinstance(msg, P.FlushLogs):
                link.send(P.LogsFlushed(msg.req_id))

        link.on_message = on_message
        return {}

    srv = Server("secret", on_hello, name="faulty", handshake_timeout=0.5,
                 max_unauthenticated=4)
    await srv.start(f"unix:{tmp_path}/f.sock")
    yield srv
    await srv.aclose()


async def test_a_handler_that_raises_answers_with_its_error(faulty):
    from aray.exceptions import AraySystemError

    link = await connect(faulty.address, hello())
    task = asyncio.ensure_future(link.run())
    with pytest.raises(AraySystemError, match="KeyError: 'no such table'") as info:
        await link.request(lambda r: P.GetClusterState(r), timeout=5)
    assert "Traceback" in str(info.value) and "GetClusterState" in str(info.value)
    with pytest.raises(AraySystemError, match="RuntimeError: failed later"):
        await link.request(lambda r: P.GetStoreStats(r), timeout=5)
    # the link is still good
    await link.request(lambda r: P.FlushLogs(r), timeout=5)
    await link.aclose()
    await task


async def test_a_request_without_answer_times_out(faulty):
    from aray.exceptions import RequestTimeoutError

    link = await connect(faulty.address, hello())
    task = asyncio.ensure_future(link.run())
    with pytest.raises(RequestTimeoutError, match="ListLogs within 0.2 s"):
        await link.request(lambda r: P.ListLogs(r), timeout=0.2)
    assert isinstance(RequestTimeoutError("x"), ConnectionError)
    await link.aclose()
    await task


async def test_a_message_that_will_not_encode_closes_the_link_and_fails_pending(faulty):
    link = await connect(faulty.address, hello(), name="to-faulty")
    task = asyncio.ensure_future(link.run())
    pending = asyncio.ensure_future(link.request(lambda r: P.ListLogs(r), timeout=None))
    await async_wait_until(lambda: link._pending, 5, message="the request to be pending")
    link.send(P.ReturnLease(2**70))  # msgpack cannot encode it
    with pytest.raises(ConnectionError, match="to-faulty.*writer failed.*ReturnLease"):
        await asyncio.wait_for(pending, 5)
    assert link.closed
    with pytest.raises(ConnectionError, match="closed"):
        link.send(P.ReturnLease("w"))
    await asyncio.wait_for(task, 5)


async def test_an_oversized_hello_is_refused_unread(faulty):
    big = P.Hello(P.PROTOCOL_VERSION, "secret", "core", "x" * 100_000, os.getpid(), {})
    with pytest.raises(ValueError, match="larger than"):
        P.encode_hello(big)
    async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=faulty.address[5:])) as s:
        with pytest.raises(aiohttp.ClientError):
            await s.ws_connect("http://localhost/link",
                               headers={P.HELLO_HEADER: "A" * 1_000_000})


async def test_silent_and_slow_connections_are_closed_and_capped(faulty):
    """A connection that never finishes its handshake is closed after the deadline; past
    the cap, new ones are dropped at once; a good client still gets through afterwards."""
    path = faulty.address[5:]

    async def closed_by_server(reader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionError:  # reset, rather than closed in order
            return True

    loop = asyncio.get_running_loop()
    start = loop.time()
    silent = [await asyncio.open_unix_connection(path) for _ in range(3)]
    # a slowloris: the request line, then a header byte now and then
    slow_r, slow_w = await asyncio.open_unix_connection(path)
    slow_w.write(b"GET /link HTTP/1.1\r\nHost: x\r\n")
    await async_wait_until(lambda: faulty._web._counts["unix"] == 4, 5,
                           message="the server to count 4 connections waiting to authenticate")
    # the cap (4) is reached: these are dropped at once
    extra = [await asyncio.open_unix_connection(path) for _ in range(3)]
    for reader, _writer in extra:
        assert await closed_by_server(reader)
    assert loop.time() - start < 0.5
    for _ in range(20):
        try:
            slow_w.write(b"X")
            await slow_w.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0.1)  # a slow client: a byte now and then, until it is cut off
    for reader, _writer in silent + [(slow_r, slow_w)]:
        assert await closed_by_server(reader)
    assert loop.time() - start < 3
    for _, writer in silent + extra + [(slow_r, slow_w)]:
        writer.close()
    link = await connect(faulty.address, hello())
    task = asyncio.ensure_future(link.run())
    await link.request(lambda r: P.FlushLogs(r), timeout=5)
    await link.aclose()
    await task


async def test_a_peer_that_reads_nothing_is_cut_off(tmp_path):
    """Sending to a peer that has stopped reading fills the socket, then the outbox; once
    the writer has waited past the stall timeout with the outbox full, the link closes
    with a clear error instead of queueing for ever."""
    from aray import _link

    links = []

    def on_hello(link, h):
        link.stall_timeout = 0.5
        links.append(link)
        return {}

    srv = Server("secret", on_hello, name="sender")
    await srv.start(f"unix:{tmp_path}/s.sock")
    try:
        reader, writer = await asyncio.open_unix_connection(f"{tmp_path}/s.sock")
        writer.write(("GET /link HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      f"{P.HELLO_HEADER}: {P.encode_hello(hello())}\r\n\r\n").encode())
        assert b"101" in await reader.readuntil(b"\r\n\r\n")
        # this client never reads again
        await async_wait_until(lambda: links, 5, 0.01, message="the link to come up")
        link = links[0]
        with pytest.raises(ConnectionError, match="read nothing"):
            for _ in range(100):
                for _ in range(_link.OUTBOX_LIMIT):
                    link.send(P.LogLines(1, "t", 1, ["x" * 1000], "j"))
                await asyncio.sleep(0.1)  # the writer's turn: it fills the socket, then waits
        assert link.closed
        writer.close()
    finally:
        await srv.aclose()
