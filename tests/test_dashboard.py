"""The dashboard of a real head: its JSON API, login, websocket updates, log streaming,
/metrics, and the pages in a real browser (Debian's chromium, driven by playwright)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time

import aiohttp
import pytest
from test_cluster import Cluster, free_port

import aray
from aray import _global
from aray.util.state import list_objects

pytestmark = pytest.mark.anyio

API_PATHS = ["/api/summary", "/api/nodes", "/api/tasks", "/api/actors", "/api/objects",
             "/api/jobs", "/api/timeline", "/api/logs", "/metrics"]


@aray.remote
def dash_square(x):
    return x * x


@aray.remote
def dash_fails():
    raise ValueError("dash boom")


@aray.remote
class DashCounter:
    def ping(self):
        return "pong"

    def say(self, word):
        print(f"dash says {word}")
        return word


@pytest.fixture(scope="module")
def work(cluster):
    """The shared cluster with some history: finished and failed tasks, an actor, a stored
    object; returns what the tests look for."""
    assert aray.get([dash_square.remote(i) for i in range(30)]) == [i * i for i in range(30)]
    with pytest.raises(ValueError, match="dash boom"):
        aray.get(dash_fails.remote())
    counter = DashCounter.options(name="dash-counter").remote()
    assert aray.get(counter.ping.remote()) == "pong"
    assert aray.get(counter.say.remote("hello")) == "hello"
    big = aray.put(b"x" * 2_000_000)
    group = aray.util.placement_group([{"Custom": 1}], name="dash-group")
    assert group.wait(30)
    core = _global.core()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # task events go to the head in batches
        summary = aray.util.state.summarize_tasks()
        if summary.get("dash_square", {}).get("FINISHED") == 30 and "dash_fails" in summary:
            break
        time.sleep(0.1)
    time.sleep(1.2)  # and a heartbeat brings the host's CPU and memory
    yield {"url": core.dashboard_url, "token": core.token, "node_id": core.node_id,
           "object": big.hex(), "actor": counter}
    aray.util.remove_placement_group(group)


def browser_like(source: str = "127.0.0.1"):
    """A client session that keeps cookies of hosts given by IP address, as browsers do.
    It connects from ``source``: tests that send wrong tokens use a loopback address of their
    own, so that the dashboard's limit on failed logins never refuses another test."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(local_addr=(source, 0)))


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


async def next_not_update(ws, timeout: float = 10.0) -> aiohttp.WSMessage:
    """The socket's next message that is not a pushed update (those come every second), or
    its close; fails the test if none comes within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = await ws.receive(timeout=left)
        if msg.type != aiohttp.WSMsgType.TEXT or json.loads(msg.data)["type"] != "update":
            return msg
    raise AssertionError(f"nothing but updates on the socket for {timeout} s")


async def get_json(session, url, token, expect=200):
    async with session.get(url, headers=bearer(token)) as r:
        assert r.status == expect, await r.text()
        return await r.json()


async def test_everything_needs_the_token(work):
    url = work["url"]
    async with browser_like("127.0.0.2") as s:
        for path in API_PATHS:
            for headers in ({}, bearer("wrong-token"), {"Cookie": "aray_session=forged"}):
                async with s.get(url + path, headers=headers) as r:
                    assert r.status == 401, path
                    body = await r.text()
                    assert work["node_id"] not in body and "dash_square" not in body
                    assert "token" in json.loads(body)["error"]
        # the page itself: a login form, nothing of the cluster
        async with s.get(url + "/") as r:
            assert r.status == 401
            body = await r.text()
            assert '<form method="post" action="/login">' in body
            assert work["node_id"] not in body
            assert r.headers["X-Frame-Options"] == "DENY"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        async with s.get(url + "/?token=wrong") as r:
            assert r.status == 401 and "not the token of this cluster" in await r.text()
        # the websocket closes at once, saying why
        async with s.ws_connect(url + "/ws") as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401
    # newer pages too (from an address of its own: see below)
    async with browser_like("127.0.0.6") as s:
        for headers in ({}, bearer("wrong-token"), {"Cookie": "aray_session=forged"}):
            async with s.get(url + "/api/placement_groups", headers=headers) as r:
                assert r.status == 401 and "dash-group" not in await r.text()
    # a token with bytes that are not UTF-8 is just a wrong one (from an address of its own:
    # the wrong tokens above are as many as one address may send in a minute)
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), source_address=("127.0.0.5", 0)) as raw:
        raw.settimeout(10)
        raw.sendall(b"GET /api/summary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Authorization: Bearer \xff\xfe\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 401 ")


async def test_login_link_sets_a_strict_httponly_cookie(work):
    url, token = work["url"], work["token"]
    async with browser_like() as s:
        async with s.get(url + f"/?token={token}", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/"  # the token leaves the URL
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        value = re.search(r"aray_session=([^;]+)", cookie).group(1)
        assert token not in value  # the cookie proves the token without being it
        async with s.get(url + "/") as r:  # the session's cookie jar sends it
            assert r.status == 200 and "app.js" in await r.text()
        async with s.get(url + "/api/summary") as r:
            assert r.status == 200
        async with s.post(url + "/logout", allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(url + "/api/summary") as r:
            assert r.status == 401
    async with browser_like("127.0.0.4") as s:  # the login form
        async with s.post(url + "/login", data={"token": "nope"}) as r:
            assert r.status == 401 and "Wrong token" in await r.text()
        async with s.post(url + "/login", data={"token": token}, allow_redirects=False) as r:
            assert r.status == 303 and "aray_session=" in r.headers["Set-Cookie"]
            other = re.search(r"aray_session=([^;]+)", r.headers["Set-Cookie"]).group(1)
    assert other != value  # every login is a session of its own


async def test_logging_out_ends_the_session_for_every_copy_of_the_cookie(work):
    url, token = work["url"], work["token"]
    async with browser_like() as s:
        async with s.post(url + "/login", data={"token": token}, allow_redirects=False) as r:
            assert r.status == 303
            assert "Max-Age=43200" in r.headers["Set-Cookie"]  # SESSION_TTL: 12 h
            session = re.search(r"aray_session=([^;]+)", r.headers["Set-Cookie"]).group(1)
        copied = {"Cookie": f"aray_session={session}"}  # what a stolen cookie would send
        async with aiohttp.ClientSession() as thief:
            async with thief.get(url + "/api/summary", headers=copied) as r:
                assert r.status == 200
            async with thief.ws_connect(url + "/ws", headers=copied) as open_ws:
                assert (await open_ws.receive_json(timeout=5))["type"] == "update"
                async with s.post(url + "/logout", allow_redirects=False) as r:
                    assert r.status == 303
                # the socket opened with the session closes too, within a push interval
                msg = await next_not_update(open_ws)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401
            # the copy of the cookie is refused everywhere
            async with thief.get(url + "/api/summary", headers=copied) as r:
                assert r.status == 401
            async with thief.get(url + "/", headers=copied) as r:
                assert r.status == 401 and 'action="/login"' in await r.text()
            async with thief.ws_connect(url + "/ws", headers=copied) as ws:
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401


class FakeClock:
    """A clock for the dashboard's bookkeeping that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_revoke_and_stay_bounded():
    from aray._head.dashboard import Sessions

    clock = FakeClock()
    sessions = Sessions(clock, ttl=100, limit=3)
    first = sessions.create()
    assert len(first) == 43 and sessions.valid(first)  # 32 random bytes, URL-safe base64
    assert not any(sessions.valid(s) for s in (first[:-1], first + "x", ""))
    clock.now = 99.9
    assert sessions.valid(first)
    clock.now = 100
    assert not sessions.valid(first)  # expired
    second, third = sessions.create(), sessions.create()
    sessions.revoke(second)
    assert not sessions.valid(second) and sessions.valid(third)
    sessions.revoke("never was")
    made = [sessions.create() for _ in range(5)]
    assert len(sessions) == 3 and not sessions.valid(third)  # the oldest went first
    assert all(sessions.valid(s) for s in made[-3:]) and not sessions.valid(made[0])
    clock.now = 1000  # a login after every session expired finds the table empty
    sessions.create()
    assert len(sessions) == 1


def test_login_limiter_counts_failures_per_address_in_a_window():
    from aray._head.dashboard import LoginLimiter

    clock = FakeClock()
    limiter = LoginLimiter(clock, max_failures=3, window=60, max_addresses=4)
    for t in (0, 10, 20):
        assert limiter.retry_after("a") == 0
        clock.now = t
        limiter.failed("a")
    assert limiter.retry_after("a") == 40  # until the failure at 0 is a window old
    assert limiter.retry_after("b") == 0  # per address
    clock.now = 59
    assert limiter.retry_after("a") == 1
    clock.now = 60
    assert limiter.retry_after("a") == 0  # the window slid past the first failure
    limiter.failed("a")  # 10, 20, 60: blocked until 70
    assert limiter.retry_after("a") == 10
    clock.now = 200  # every failure is old now
    assert limiter.retry_after("a") == 0
    # a spray of addresses: at most max_addresses remembered, the longest ago forgotten
    for address in ("a", "a", "a", "b", "c", "d", "e"):
        limiter.failed(address)
    assert len(limiter) == 4 and limiter.retry_after("a") == 0
    clock.now = 300  # failures out of the window are dropped as new ones come
    limiter.failed("f")
    assert len(limiter) == 1


def test_the_examples_of_the_json_api_module_run():
    # the JSON API (its routes, the checks of the parameters) is a module of its own
    import doctest

    from aray._head import views_api

    found = doctest.testmod(views_api, optionflags=doctest.ELLIPSIS)
    assert found.failed == 0 and found.attempted >= 8


async def test_wrong_tokens_from_one_address_are_refused_for_a_while(work):
    from aray._head.dashboard import LOGIN_FAILURES, LOGIN_WINDOW

    url, token = work["url"], work["token"]
    async with browser_like("127.0.0.3") as s:
        async with s.post(url + "/login", data={"token": token}) as r:  # a session first
            assert r.status == 200
        guesses = [lambda: s.post(url + "/login", data={"token": "guess"}),
                   lambda: s.get(url + "/?token=guess"),
                   lambda: s.get(url + "/api/summary", headers=bearer("guess"))]
        for i in range(LOGIN_FAILURES):  # each way of sending a token counts
            async with guesses[i % 3]() as r:
                assert r.status == 401, i
        # now even the right token is refused from this address, every way it comes
        async with s.get(url + "/api/summary", headers=bearer(token)) as r:
            assert r.status == 429
            assert 1 <= int(r.headers["Retry-After"]) <= LOGIN_WINDOW
            assert "too many wrong tokens" in (await r.json())["error"]
        async with s.post(url + "/login", data={"token": token}) as r:
            assert r.status == 429 and "Too many wrong tokens" in await r.text()
            assert "Retry-After" in r.headers
        async with s.get(url + f"/?token={token}") as r:
            assert r.status == 429
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(url + "/ws", headers=bearer(token))
        assert refused.value.status == 429
        # the session made before is not a guess: it still works
        async with s.get(url + "/api/summary") as r:
            assert r.status == 200
    async with aiohttp.ClientSession() as s:  # other addresses are not refused
        await get_json(s, url + "/api/summary", token)


async def test_parameters_out_of_range_answer_400(work):
    url, token, node = work["url"], work["token"], work["node_id"]
    async with aiohttp.ClientSession() as s:
        log = next(r for r in (await get_json(s, url + "/api/logs", token))["rows"]
                   if r["size"])
        log_path = f"/api/logs/{node}/{log['file']}"
        long = "x" * 257
        bad = [  # (path, parameter, the range the error names)
            *[(f"/api/{what}?offset={v}", "offset", "from 0 to 1000000000")
              for what in ("tasks", "actors", "objects")
              for v in ("-1", "1000000001", "1.5", "1e3", "abc", "0x10", "1_0", "%205",
                        str(10**30))],
            *[(f"/api/{what}?limit={v}", "limit", "from 0 to 1000")
              for what in ("tasks", "actors", "objects") for v in ("-5", "1001", "2.0")],
            *[(f"/api/timeline?seconds={v}", "seconds", "from 1 to 86400")
              for v in ("0", "-60", "86401", "60.5", "inf")],
            *[(f"{log_path}?offset={v}", "offset",
               "from -9007199254740992 to 9007199254740992")
              for v in (str(2**53 + 1), str(-2**53 - 1), "1.5", "nan", str(10**30))],
            *[(f"{log_path}?limit={v}", "limit", "from 0 to 1048576")
              for v in ("-1", str(2**20 + 1), "big")],
            *[(f"/api/tasks?{name}={long}", name, "at most 256 characters")
              for name in ("state", "name", "job_id")],
            (f"/api/actors?state={long}", "state", "at most 256 characters"),
            (f"/api/logs/{long}/{log['file']}", "node_id", "at most 256 characters"),
            (f"/api/logs/{node}/{long}", "file", "at most 256 characters"),
        ]
        for path, name, allowed in bad:
            async with s.get(url + path, headers=bearer(token)) as r:
                assert r.status == 400, path
                error = (await r.json())["error"]
                assert error.startswith(f"{name} must be ") and allowed in error, (path, error)
        # the ends of each range are allowed
        for path in ("/api/tasks?offset=1000000000&limit=1000", "/api/actors?limit=0",
                     "/api/objects?offset=0&limit=1000", "/api/timeline?seconds=1",
                     "/api/timeline?seconds=86400", f"/api/tasks?name={'x' * 256}",
                     f"{log_path}?offset={2**53}&limit={2**20}", f"{log_path}?offset=-{2**53}"):
            await get_json(s, url + path, token)
        assert (await get_json(s, url + f"{log_path}?offset=-{2**53}&limit=5", token))[
            "offset"] == 5  # from the start of the file
        # a tail command with a bad field: an error on the socket, which goes on working
        async with s.ws_connect(url + "/ws", headers=bearer(token)) as ws:
            for fields, error in [({"offset": 1.5}, "offset must be an integer"),
                                  ({"offset": True}, "offset must be an integer"),
                                  ({"offset": "abc"}, "offset must be an integer"),
                                  ({"offset": 10**30}, "offset must be an integer"),
                                  ({"node_id": 7}, "node_id must be a string"),
                                  ({"file": long}, "file must be a string")]:
                await ws.send_json({"type": "tail", "node_id": node, "file": log["file"],
                                    "offset": 0, **fields})
                msg = json.loads((await next_not_update(ws)).data)
                assert msg["type"] == "error" and error in msg["error"], (fields, msg)
            await ws.send_json({"type": "tail", "node_id": node, "file": log["file"],
                                "offset": -10})
            msg = json.loads((await next_not_update(ws)).data)
            assert msg["type"] == "log" and msg["file"] == log["file"] and not msg.get("error")


async def test_api_shows_nodes_tasks_actors_objects_jobs(work):
    url, token = work["url"], work["token"]
    async with aiohttp.ClientSession() as s:
        summary = await get_json(s, url + "/api/summary", token)
        assert summary["nodes"] == {"alive": 1, "dead": 0}
        assert summary["tasks"]["by_name"]["dash_square"]["FINISHED"] == 30
        assert summary["tasks"]["by_name"]["dash_fails"] == {"FAILED": 1}
        assert summary["actors"]["by_state"]["ALIVE"] >= 1
        assert summary["jobs"]["alive"] >= 1
        assert summary["resources"]["total"]["CPU"] == 2
        assert summary["object_store"]["used_bytes"] >= 2_000_000

        nodes = (await get_json(s, url + "/api/nodes", token))["rows"]
        assert [n["NodeID"] for n in nodes] == [work["node_id"]]
        node = nodes[0]
        assert node["Alive"] and node["is_head"] and node["Resources"]["Custom"] == 4
        assert 0 <= node["Host"]["cpu_percent"] <= 100
        assert 0 < node["Host"]["memory_used"] < node["Host"]["memory_total"]
        assert node["ObjectStore"]["num_objects"] >= 1

        # tasks: newest first, paginated, filtered by state and by a part of the name
        page = await get_json(s, url + "/api/tasks?name=dash_sq&limit=7&offset=7", token)
        assert page["total"] == 30 and len(page["rows"]) == 7 and page["offset"] == 7
        first = await get_json(s, url + "/api/tasks?name=dash_sq&limit=7", token)
        assert not {t["task_id"] for t in first["rows"]} & {t["task_id"] for t in page["rows"]}
        assert first["rows"][0]["submitted_at"] >= page["rows"][-1]["submitted_at"]
        task = first["rows"][0]
        assert task["node_id"] == work["node_id"] and task["worker_pid"] > 0
        assert task["duration_s"] >= 0
        failed = (await get_json(s, url + "/api/tasks?state=FAILED", token))["rows"]
        assert [t["name"] for t in failed if t["name"] == "dash_fails"] == ["dash_fails"]
        assert "dash boom" in next(t for t in failed if t["name"] == "dash_fails")["error"]

        actors = (await get_json(s, url + "/api/actors", token))["rows"]
        actor = next(a for a in actors if a["name"] == "dash-counter")
        assert actor["class_name"] == "DashCounter" and actor["state"] == "ALIVE"
        assert actor["pid"] > 0 and actor["node_id"] == work["node_id"]

        objects = await get_json(s, url + "/api/objects", token)
        obj = next(o for o in objects["rows"] if o["object_id"] == work["object"])
        assert obj["size"] >= 2_000_000 and obj["nodes"] == [work["node_id"]]
        assert obj["owner"] == f"driver pid {os.getpid()}" and obj["spilled"] is False
        assert objects["total_bytes"] >= obj["size"]

        jobs = (await get_json(s, url + "/api/jobs", token))["rows"]
        assert any(j["driver_pid"] == os.getpid() and j["alive"] for j in jobs)

        groups = (await get_json(s, url + "/api/placement_groups", token))["rows"]
        group = next(g for g in groups if g["name"] == "dash-group")
        assert group["state"] == "CREATED" and group["bundles"] == {"0": {"Custom": 1.0}}
        assert group["bundles_to_node_id"] == {"0": work["node_id"]}

        timeline = await get_json(s, url + "/api/timeline?seconds=600", token)
        assert any(r["name"] == "dash_square" and r["end"] >= r["start"]
                   for r in timeline["rows"])

        # bad input: named
        async with s.get(url + "/api/tasks?limit=many", headers=bearer(token)) as r:
            assert r.status == 400 and "limit must be an integer" in (await r.json())["error"]
        async with s.get(url + f"/api/logs/{work['node_id']}/..%2Fnode.log",
                         headers=bearer(token)) as r:
            assert r.status == 404 and "no such log file" in (await r.json())["error"]
        async with s.get(url + "/api/logs/nosuchnode/worker-1.out", headers=bearer(token)) as r:
            assert r.status == 404 and "no live node" in (await r.json())["error"]

    # the same objects in Python
    assert any(o["object_id"] == work["object"] for o in list_objects())


async def test_metrics_in_prometheus_format(work):
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(
            work["url"] + "/metrics", headers=bearer(work["token"])) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {(m.name, tuple(sorted(sample.labels.items()))): sample.value
               for m in text_string_to_metric_families(text) for sample in m.samples}
    node = work["node_id"]
    assert samples[("aray_tasks", (("name", "dash_square"), ("state", "FINISHED")))] == 30
    assert samples[("aray_tasks", (("name", "dash_fails"), ("state", "FAILED")))] == 1
    assert samples[("aray_actors", (("state", "ALIVE"),))] >= 1
    assert samples[("aray_nodes", (("state", "alive"),))] == 1
    assert samples[("aray_resource_total", (("node_id", node), ("resource", "CPU")))] == 2
    assert samples[("aray_object_store_used_bytes", (("node_id", node),))] >= 2_000_000
    assert samples[("aray_node_memory_total_bytes", (("node_id", node),))] > 0


async def test_websocket_pushes_updates_and_streams_logs(work):
    import asyncio

    url, token = work["url"], work["token"]
    async with aiohttp.ClientSession() as s:
        actors = (await get_json(s, url + "/api/actors", token))["rows"]
        pid = next(a["pid"] for a in actors if a["name"] == "dash-counter")
        logs = (await get_json(s, url + "/api/logs", token))["rows"]
        # the actor's worker printed "dash says hello" to its stdout file
        row = next(r for r in logs if r["pid"] == pid and r["stream"] == "out")
        assert row["node_id"] == work["node_id"] and row["alive"]
        data = await get_json(s, url + f"/api/logs/{row['node_id']}/{row['file']}", token)
        assert "dash says hello" in data["data"]
        assert "--- task DashCounter (job " in data["data"]  # whose task printed it
        async with s.ws_connect(url + "/ws", headers=bearer(token)) as ws:
            update = await ws.receive_json(timeout=5)
            assert update["type"] == "update"
            assert update["nodes"][0]["NodeID"] == work["node_id"]
            assert update["summary"]["tasks"]["by_name"]["dash_square"]["FINISHED"] == 30
            await ws.send_json({"type": "tail", "node_id": row["node_id"],
                                "file": row["file"], "offset": data["offset"]})
            # output printed after the page started following the file reaches it
            ref = work["actor"].say.remote("streamed live")
            await asyncio.get_running_loop().run_in_executor(None, aray.get, ref)
            seen = ""
            deadline = time.monotonic() + 20
            while "dash says streamed live" not in seen and time.monotonic() < deadline:
                msg = await ws.receive_json(timeout=20)
                if msg["type"] == "log":
                    assert msg["file"] == row["file"]
                    seen += msg["data"]
            assert "dash says streamed live" in seen
            assert (await ws.receive_json(timeout=5))["type"] in ("update", "log")


def test_task_pages_stay_small_with_100k_tasks():
    """100,000 ended tasks (the table's limit) plus running ones: a page copies only its
    rows, the summary counts them all, and the oldest ended ones leave first."""
    from aray._head import views
    from aray._head.server import Head

    head = Head("t")
    now = time.time()
    for start in range(0, 100_500, 500):
        events = []
        for i in range(start, start + 500):
            tid = i.to_bytes(12, "little")
            state = "FAILED" if i % 1000 == 0 else "FINISHED"
            events.append([tid, "RUNNING", now, {"name": f"t{i % 3}", "job_id": "01"}])
            events.append([tid, state, now + 0.01, {"error": "boom" if state == "FAILED" else ""}])
        head.tasks.apply(events)
    head.tasks.apply([[b"r" * 12, "RUNNING", now, {"name": "long"}]])
    assert len(head.tasks.tasks) == 100_001  # 500 ended ones dropped
    page = views.tasks(head, limit=50, offset=100)
    assert page["total"] == 100_001 and len(page["rows"]) == 50
    assert views.tasks(head, state="RUNNING")["rows"][0]["name"] == "long"
    failed = views.tasks(head, state="FAILED", limit=1000)
    assert failed["total"] == 100 and {r["error"] for r in failed["rows"]} == {"boom"}
    assert views.tasks(head, name="t1", limit=5)["total"] == sum(
        1 for t in head.tasks.tasks.values() if t["name"] == "t1")
    summary = views.summary(head)["tasks"]
    assert summary["by_state"]["FINISHED"] + summary["by_state"]["FAILED"] == 100_000
    assert views.tasks(head, limit=10**9)["limit"] == views.MAX_PAGE


def test_leases_stay_fast_while_big_pages_are_built(run_script):
    """The dashboard builds its pages on a thread of its own: with 100,000 tasks in the
    head's table, a page that filters and sorts them all, served again and again, holds
    up the leases of the node in the same process only a little."""
    result = run_script("""
        import statistics, threading, urllib.request
        from aray import _global, _protocol as P
        from aray.util.state import summarize_tasks

        @aray.remote
        def tiny():
            return 1

        info = aray.init(num_cpus=1, dashboard_port=0)
        core = _global.core()
        now = time.time()
        for first in range(0, 100_000, 5_000):  # what the workers of a busy cluster report
            events = [[i.to_bytes(12, "little"), "FINISHED", now, {"name": "filler"}]
                      for i in range(first, first + 5_000)]
            asyncio.run_coroutine_threadsafe(
                core._send_to_head(P.TaskEvents(events, {})), core.loop).result()
        while summarize_tasks().get("filler", {}).get("FINISHED", 0) < 100_000:
            time.sleep(0.1)

        def latencies(n=60, until=lambda: True):
            out = []
            while len(out) < n or not until():
                time.sleep(0.02)  # longer than a lease lingers: each task needs a new lease
                start = time.perf_counter()
                aray.get(tiny.remote())
                out.append(time.perf_counter() - start)
            return out

        quiet = latencies()
        stop, pages = threading.Event(), []
        def pages_again_and_again():
            request = urllib.request.Request(
                info["dashboard_url"] + "/api/tasks?state=FINISHED&limit=50&offset=50000",
                headers={"Authorization": "Bearer " + core.token})
            while not stop.is_set():
                assert json.loads(urllib.request.urlopen(request).read())["total"] == 100_000
                pages.append(1)
        pager = threading.Thread(target=pages_again_and_again)
        pager.start()
        busy = latencies(until=lambda: len(pages) >= 5)  # built while the leases are timed
        stop.set()
        pager.join()
        print("RESULT", json.dumps({"quiet": statistics.median(quiet),
                                    "busy": statistics.median(busy), "pages": len(pages)}))
        report_pids()
        aray.shutdown()
        """, timeout=120)
    result.assert_no_leftovers()
    got = json.loads(result.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert got["pages"] >= 5, got
    # built on the head's loop, pages held up leases for their whole build: a task's round
    # trip went from ~6 to ~50 ms (median); built on the dashboard's thread, to ~15 ms
    assert got["busy"] < 2 * got["quiet"] + 0.020, got


async def test_aray_dashboard_gives_a_login_link(tmp_path):
    c = Cluster()
    port = free_port()
    try:
        out = c.cli("start", "--head", "--port", str(c.port), "--num-cpus", "1",
                    "--dashboard-port", str(port)).stdout
        assert re.search(r"Dashboard: (http://\S+)", out).group(1) == f"http://127.0.0.1:{port}"
        link = c.cli("dashboard").stdout.strip()
        assert link.startswith(f"http://127.0.0.1:{port}/?token=")
        async with browser_like() as s:
            async with s.get(link) as r:  # follows the redirect with the cookie
                assert r.status == 200 and str(r.url) == f"http://127.0.0.1:{port}/"
            async with s.get(f"http://127.0.0.1:{port}/api/nodes") as r:
                assert r.status == 200 and (await r.json())["rows"][0]["is_head"]
        # a second head cannot take a dashboard port that is in use: it says so
        other = Cluster()
        try:
            proc = other.cli("start", "--head", "--port", str(other.port),
                             "--dashboard-port", str(port), check=False)
            assert proc.returncode != 0
            assert f"the dashboard cannot listen on 127.0.0.1:{port}" in proc.stderr
            assert other.node_infos() == []
        finally:
            other.stop()
        # a second node: the dashboard shows its objects, copies and logs too
        far = c.join("--num-cpus", "1", "--resources", '{"far": 1}')
        head_id = c.node_infos()[0]["node_id"]
        out = c.driver("""
            import json, urllib.request
            from aray import _global
            aray.init(address="auto")
            core = _global.core()

            def api(path):
                request = urllib.request.Request(
                    core.dashboard_url + path,
                    headers={"Authorization": f"Bearer {core.token}"})
                with urllib.request.urlopen(request) as response:
                    return json.load(response)

            @aray.remote(resources={"far": 1})
            def make():
                print("made far away", flush=True)
                return b"z" * 3_000_000

            ref = make.remote()
            assert len(aray.get(ref)) == 3_000_000  # a copy comes to this node
            for _ in range(100):
                rows = [o for o in api("/api/objects")["rows"] if o["object_id"] == ref.hex()]
                if rows and len(rows[0]["nodes"]) == 2:
                    break
                time.sleep(0.1)
            print("OBJECT", json.dumps(rows))
            print("NODES", json.dumps([[n["NodeID"], n["Alive"], n["is_head"]]
                                       for n in api("/api/nodes")["rows"]]))
            logs = api("/api/logs")["rows"]
            print("LOGNODES", json.dumps(sorted({r["node_id"] for r in logs})))
            for row in logs:
                if row["node_id"] == %r and row["stream"] == "out" and row["size"]:
                    text = api(f"/api/logs/{row['node_id']}/{row['file']}")["data"]
                    if "made far away" in text:
                        print("FARLOG ok")
            """ % far["node_id"], tmp_path).stdout  # noqa: UP031  (the script has braces)
        rows = json.loads(re.search(r"OBJECT (.*)", out).group(1))
        assert rows[0]["nodes"] == [far["node_id"], head_id], out  # where it was made first
        assert rows[0]["owner"].startswith("driver pid ") and rows[0]["size"] >= 3_000_000
        assert sorted(json.loads(re.search(r"NODES (.*)", out).group(1))) == sorted(
            [[head_id, True, True], [far["node_id"], True, False]])
        assert json.loads(re.search(r"LOGNODES (.*)", out).group(1)) == sorted(
            [head_id, far["node_id"]])
        assert "FARLOG ok" in out
        # the CLI lists objects across the cluster
        c.driver("""
            import subprocess
            aray.init(address="auto")
            ref = aray.put(b"y" * 1_000_000)
            for _ in range(50):
                out = subprocess.run([sys.executable, "-m", "aray", "list", "objects"],
                                     capture_output=True, text=True, check=True).stdout
                if ref.hex() in out and f"driver pid {os.getpid()}" in out:
                    break
                time.sleep(0.2)
            else:
                sys.exit("aray list objects does not show the object: " + out)
            """, tmp_path)
    finally:
        c.stop()
    c = Cluster()
    try:  # --include-dashboard false: no dashboard, no link
        out = c.cli("start", "--head", "--port", str(c.port), "--num-cpus", "1",
                    "--include-dashboard", "false").stdout
        assert "Dashboard:" not in out and c.node_infos()[0]["dashboard_url"] == ""
    finally:
        c.stop()


def test_init_options(run_script):
    result = run_script("""
        import urllib.request
        info = aray.init(num_cpus=1, include_dashboard=False)
        assert info["dashboard_url"] == "", info
        aray.shutdown()
        info = aray.init(num_cpus=1, dashboard_port=0)
        print("URL", info["dashboard_url"])
        try:
            urllib.request.urlopen(info["dashboard_url"] + "/api/nodes")
        except urllib.error.HTTPError as exc:
            print("STATUS", exc.code)
        report_pids()
        aray.shutdown()
        for bad in (dict(dashboard_port=70000), dict(dashboard_port="80"),
                    dict(include_dashboard="yes"), dict(dashboard_host="no.such.host.invalid")):
            try:
                aray.init(num_cpus=1, **bad)
            except (TypeError, ValueError, OSError) as exc:
                print("BAD", exc)
        print("INITIALIZED", aray.is_initialized())
        """)
    result.assert_no_leftovers()
    assert "STATUS 401" in result.stdout
    url = re.search(r"URL (\S+)", result.stdout).group(1)
    assert f"aray: dashboard at {url}\n" in result.stderr and "?token=" not in result.stderr
    assert result.stdout.count("BAD ") == 4 and "dashboard_port must be a port" in result.stdout
    assert "the dashboard cannot listen on no.such.host.invalid:8265" in result.stdout
    assert "INITIALIZED False" in result.stdout


def _log_files(url: str, token: str) -> list[dict]:
    import urllib.request

    request = urllib.request.Request(url + "/api/logs", headers=bearer(token))
    with urllib.request.urlopen(request) as response:
        return json.load(response)["rows"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install "
                    "chromium; .ci/run installs it)")
def test_dashboard_in_a_browser(work, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    url, token = work["url"], work["token"]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            page.fill("#token", token)  # the login page
            page.click("button[type=submit]")
            page.wait_for_selector(f".node-card[data-node-id='{work['node_id']}']", timeout=15000)
            assert page.url == url + "/" or page.url.startswith(url + "/#")
            page.wait_for_selector("#timeline svg", timeout=15000)
            page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
            page.goto(url + "/#tasks")
            page.wait_for_selector("#task-rows tr td.name", timeout=15000)
            page.fill("#task-name-filter", "dash_square")
            page.wait_for_function(  # only dash_square's rows are left
                "() => { const names = [...document.querySelectorAll('#task-rows td.name')]"
                ".map(td => td.textContent); return names.length === 30 && "
                "names.every(n => n === 'dash_square'); }", timeout=15000)
            page.screenshot(path=str(tmp_path / "tasks.png"), full_page=True)
            # the actor's worker log, opened from the logs page
            pid = next(a["pid"] for a in aray.util.state.list_actors()
                       if a["name"] == "dash-counter")
            log_file = next(r["file"] for r in _log_files(url, token)
                            if r["pid"] == pid and r["stream"] == "out")
            page.goto(url + "/#logs")
            page.click(f"#log-files .log-file[data-file='{log_file}']")
            page.wait_for_function("() => document.querySelector('#log-view').textContent"
                                   ".includes('dash says hello')", timeout=15000)
            aray.get(work["actor"].say.remote("in the browser"))  # followed as it prints
            page.wait_for_function("() => document.querySelector('#log-view').textContent"
                                   ".includes('dash says in the browser')", timeout=15000)
            page.screenshot(path=str(tmp_path / "logs.png"), full_page=True)
            page.goto(url + "/#groups")  # the placement groups, with their bundles' nodes
            page.wait_for_function(
                "() => [...document.querySelectorAll('#group-rows td')].some(td => "
                f"td.textContent.includes('on {work['node_id'][:8]}'))", timeout=15000)
            assert "dash-group" in page.inner_text("#group-rows")
            assert errors == []
        finally:
            browser.close()
    assert (tmp_path / "overview.png").stat().st_size > 10_000
    # a login link logs in and leaves the address bar without the token
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=flags)
        try:
            page = browser.new_page()
            page.goto(url + f"/?token={token}")
            page.wait_for_selector(".node-card", timeout=15000)
            assert "token" not in page.url
        finally:
            browser.close()


def test_out_of_range_log_offsets_leave_the_cluster_working(run_script):
    """An offset no message to a node can carry answers 400 (over HTTP) or an error on the
    socket (a tail command), and the head's link to its node keeps working: an actor made
    afterwards starts."""
    result = run_script("""
        import urllib.error, urllib.request
        import aiohttp
        from aray import _global
        aray.init(num_cpus=1, dashboard_port=0)
        core = _global.core()
        url, headers = core.dashboard_url, {"Authorization": f"Bearer {core.token}"}
        logs = json.load(urllib.request.urlopen(urllib.request.Request(
            url + "/api/logs", headers=headers)))["rows"]
        while not logs:  # the pool's first worker has its log files
            time.sleep(0.1)
            logs = json.load(urllib.request.urlopen(urllib.request.Request(
                url + "/api/logs", headers=headers)))["rows"]
        path = f"/api/logs/{logs[0]['node_id']}/{logs[0]['file']}"
        for query in ("offset=" + str(10**30), "offset=-" + str(10**30), "limit=" + str(10**30)):
            try:
                urllib.request.urlopen(urllib.request.Request(url + path + "?" + query,
                                                              headers=headers))
                print("HTTP 200", query)
            except urllib.error.HTTPError as exc:
                print("HTTP", exc.code, exc.read().decode()[:300])

        async def tail():
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect(url + "/ws", headers=headers) as ws:
                    await ws.send_json({"type": "tail", "node_id": logs[0]["node_id"],
                                        "file": logs[0]["file"], "offset": 10**30})
                    while True:
                        msg = await ws.receive_json(timeout=10)
                        if msg["type"] != "update":
                            print("WS", json.dumps(msg))
                            return
        try:
            asyncio.run(tail())
        except asyncio.TimeoutError:
            print("WS no answer")

        @aray.remote
        class Probe:
            def ping(self):
                return "pong"

        try:
            print("ACTOR", aray.get(Probe.remote().ping.remote(), timeout=20))
        except Exception as exc:
            print("ACTOR failed:", type(exc).__name__, exc)
        report_pids()
        aray.shutdown()
        """, timeout=90)
    result.assert_no_leftovers()
    out = result.stdout
    assert "ACTOR pong" in out, out
    assert out.count("HTTP 400") == 3, out
    assert "offset must be an integer from -9007199254740992 to 9007199254740992" in out
    assert "limit must be an integer from 0 to 1048576" in out
    ws = json.loads(re.search(r"WS (\{.*\})", out).group(1))
    assert ws["type"] == "error" and "offset must be an integer" in ws["error"], out
