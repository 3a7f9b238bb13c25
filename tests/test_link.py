"""Links over real unix sockets: the handshake, request/reply, and what a bad peer gets."""

import asyncio
import os

import aiohttp
import pytest

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
    reply = await link.request(lambda r: P.GetClusterState(r))
    assert reply.nodes == [{"n": 1}]
    for i in range(50):
        link.send(P.ReturnLease(str(i)))
    await asyncio.sleep(0.1)
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
    """A raw client sending junk or a pickle first gets closed; nothing is unpickled."""
    marker = server.address[5:] + ".pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (marker, "w"))

    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=server.address[5:])) as s:
        for payload in (b"\xff\x00garbage", pickle.dumps(Evil()),
                        P.encode([P.PushTask(b"t", b"f", pickle.dumps(Evil()), "n", b"", [], [],
                                             1, "", [], "")])):
            ws = await s.ws_connect("http://localhost/link")
            await ws.send_bytes(payload)
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == P.CLOSE_BAD_HELLO
            await ws.close()
    assert not os.path.exists(marker)
    assert server.received == []
    # and the server keeps serving good clients
    link = await connect(server.address, hello())
    task = asyncio.ensure_future(link.run())
    assert (await link.request(lambda r: P.GetClusterState(r))).nodes == [{"n": 1}]
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
