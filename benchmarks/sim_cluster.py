"""The real head against N simulated node agents: what the control plane costs at scale.

The head runs as its own process (the same ``aray._head.server.Head`` that ``aray start
--head`` runs, without a node agent beside it), so that psutil measures its CPU and memory
alone. One simulator process connects N node agents to it over real websocket links on
loopback (``aray._link.connect``, the agent's own Hello and messages of
``aray._protocol``), all on one asyncio loop. Each simulated agent does what a real one
(``aray/node/agent.py``, ``aray/node/leasing.py``) sends the head, with no workers behind
it:

* RegisterNode with its resources, then a Heartbeat every ``heartbeat_interval`` seconds
  (the head's Welcome says how often; each agent starts at a random phase);
* a CreateActor from the head is answered at once: the actor's ``hold`` is taken from the
  node's free resources, ActorStarted goes to the head, then NodeResourcesChanged (as the
  lease scheduler's grant reports); KillActor gives the hold back (ActorDied + report);
* GetStoreStats, ListLogs get empty answers; views, NodeDied and JobFinished are counted.

A driver link (role ``driver``, the messages ``aray._actor_calls`` sends) creates the
actors: RegisterActor, CreateActor, WaitActor for each. Run ``--help`` for the options;
benchmarks/README.md says what each figure is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import time
import uuid

import aiohttp
import msgpack
import psutil

from aray import _protocol as P
from aray._link import CONTROL_TIMEOUT, connect

TOKEN = "sim-cluster-token"


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the head process ---------------------------------------------------------------------
def run_head() -> None:
    """``--run-head``: the head alone, on a TCP port of loopback; prints its address and
    runs until its stdin closes (the simulator's lifeline) or SIGTERM."""
    from aray._head.server import Head

    _raise_fd_limit()

    async def main() -> None:
        head = Head(TOKEN)
        address = await head.start("tcp://127.0.0.1:0")
        print(address, flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        eof = asyncio.ensure_future(reader.read())
        await asyncio.wait([eof, asyncio.ensure_future(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        await head.aclose()

    asyncio.run(main())


class HeadProcess:
    def __init__(self, node_timeout: float) -> None:
        env = dict(os.environ, ARAY_NODE_TIMEOUT=str(node_timeout))
        self.popen = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--run-head"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                      text=True)
        line = self.popen.stdout.readline().strip()
        if not line:
            self.stop()
            raise RuntimeError("the head process did not start")
        self.address = line
        self.pid = self.popen.pid
        self.ps = psutil.Process(self.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> int:
        """Close its lifeline and wait for it to exit (SIGKILL after 20 s); its exit code."""
        try:
            self.popen.stdin.close()
        except OSError:
            pass
        try:
            return self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)


# --- simulated node agents ----------------------------------------------------------------
#: frames larger than this that hold only ClusterViewChanged are not decoded (see below)
SKIM_ABOVE = 16 << 10
_EMPTY_FRAME = msgpack.packb([])


def _skim_views(data: bytes) -> tuple[int, list[str]] | None:
    """For a frame that holds only ClusterViewChanged messages (else None): how many it
    holds, and the node ids of the last (which supersedes the others), read without
    building the rest: one process stands for N agents, and decoding every agent's copy of
    an N-node view would make the simulator, not the head, the bottleneck (a real agent
    decodes only its own)."""
    unpacker = msgpack.Unpacker(max_buffer_size=len(data) + 1, raw=False)
    unpacker.feed(data)
    try:
        count = unpacker.read_array_header()
        ids: list[str] = []
        for i in range(count):
            if unpacker.read_array_header() != 2 or unpacker.unpack() != VIEW_TAG:
                return None
            entries = unpacker.read_array_header()
            if i < count - 1:
                for _ in range(entries):
                    unpacker.skip()
                continue
            for _ in range(entries):
                fields = unpacker.read_array_header()
                ids.append(unpacker.unpack())
                for _ in range(fields - 1):
                    unpacker.skip()
    except Exception:
        return None
    return count, ids


VIEW_TAG = P.ClusterViewChanged.TAG
VIEW_UPDATE = getattr(P, "ClusterViewUpdated", None)


class _CountingWS:
    """The websocket of a link, counting the bytes of the frames it receives (and skimming
    large frames of views, which then reach the link as an empty frame)."""

    def __init__(self, ws, agent: SimAgent) -> None:
        self._ws = ws
        self._agent = agent

    def __getattr__(self, name):
        return getattr(self._ws, name)

    def __aiter__(self):
        return self

    async def __anext__(self):
        frame = await self._ws.__anext__()
        if frame.type == aiohttp.WSMsgType.BINARY:
            self._agent.sim.rx_bytes += len(frame.data)
            if len(frame.data) > SKIM_ABOVE:
                skimmed = _skim_views(frame.data)
                if skimmed is not None:
                    self._agent.full_view(skimmed[1], skimmed[0])
                    return aiohttp.WSMessage(frame.type, _EMPTY_FRAME, frame.extra)
        return frame


class SimAgent:
    def __init__(self, sim: Sim, index: int, resources: dict) -> None:
        self.sim = sim
        self.index = index
        self.node_id = uuid.uuid4().hex
        self.address = f"tcp://127.0.0.1:{20000 + index}"  # never dialled: no tasks here
        self.total = dict(resources)
        self.available = dict(resources)
        self.actors: dict[str, dict] = {}  # actor id -> hold
        self.link = None
        self.beating = True
        self.view: set[str] = set()  # the node ids of the view the head sent
        self._tasks: list[asyncio.Task] = []

    async def start(self, head_address: str) -> None:
        hello = P.Hello(P.PROTOCOL_VERSION, TOKEN, "node", self.node_id, os.getpid(), {})
        self.link = link = await connect(head_address, hello, name=f"sim{self.index}->head",
                                         timeout=60.0)
        link._ws = _CountingWS(link._ws, self)  # (the one place the simulator reaches in)
        link.on_message = self.on_message
        self._tasks.append(asyncio.ensure_future(link.run()))
        link.send(P.RegisterNode(self.node_id, self.address, "127.0.0.1", self.total,
                                 {"machine": "simulated", "pid": 0, "session_dir": ""}))
        interval = link.peer.info.get("heartbeat_interval", 1.0)
        self._tasks.append(asyncio.ensure_future(self._heartbeats(interval)))

    async def _heartbeats(self, interval: float) -> None:
        await asyncio.sleep(random.random() * interval)
        status = {"store": {"capacity": 1 << 30, "used": 0, "objects": 0, "spilled": 0},
                  "pending": [], "host": {"cpu_percent": 1.0, "memory_total": 1 << 34,
                                          "memory_used": 1 << 32, "memory_percent": 25.0}}
        while True:
            if self.beating and not self.link.closed:
                self.link.send(P.Heartbeat(self.node_id, status))
            await asyncio.sleep(interval)

    def full_view(self, node_ids: list, views: int = 1) -> None:
        """The head sent ``views`` full views, the last of these nodes."""
        self.sim.views += views
        self.view = set(node_ids)

    def _report(self) -> None:
        self.link.send_if_open(P.NodeResourcesChanged(self.node_id, dict(self.available)))

    def on_message(self, link, msg) -> None:
        sim = self.sim
        kind = type(msg)
        if kind is P.ClusterViewChanged:
            self.full_view([entry[0] for entry in msg.nodes])
        elif kind is VIEW_UPDATE:  # (a head that sends the view's changes)
            sim.views += 1
            self.view.update(entry[0] for entry in msg.changed)
            self.view.difference_update(msg.removed)
        elif kind is P.CreateActor:
            hold = msg.spec.get("hold", {})
            for k, v in hold.items():
                self.available[k] = max(0.0, self.available.get(k, 0.0) - v)
            self.actors[msg.actor_id] = hold
            sim.placed_on[msg.actor_id] = self
            link.send(P.ActorStarted(msg.actor_id, uuid.uuid4().hex[:16],
                                     f"{self.address}/{msg.actor_id}", os.getpid(),
                                     self.node_id, None))
            self._report()
            sim.on_created(msg.actor_id, self)
        elif kind is P.KillActor:
            hold = self.actors.pop(msg.actor_id, None)
            if hold is not None:
                for k, v in hold.items():
                    self.available[k] = min(self.total.get(k, 0.0),
                                            self.available.get(k, 0.0) + v)
                link.send(P.ActorDied(msg.actor_id, "it was killed"))
                self._report()
        elif kind is P.NodeDied:
            sim.on_node_died(msg.node_id)
        elif kind is P.GetStoreStats:
            link.send(P.StoreStats(msg.req_id, {}, []))
        elif kind is P.ListLogs:
            link.send(P.LogFiles(msg.req_id, []))
        elif kind is P.ReadLog:
            link.send(P.LogData(msg.req_id, b"", 0, 0, "simulated node"))
        # WithdrawActor (nothing is queued here), JobFinished: nothing to do

    def crash(self) -> None:
        """Stop at once, without a goodbye: the TCP connection is torn down under the
        link (no websocket close frame), and no more heartbeats."""
        self.beating = False
        for task in self._tasks[1:]:
            task.cancel()
        conn = getattr(self.link._ws._ws, "_conn", None)
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abort()
        else:
            self.link.abort("simulated crash")

    async def aclose(self) -> None:
        """Drop the link without reading what is still on its way (a head that is behind
        may have a lot queued for it)."""
        for task in self._tasks[1:]:
            task.cancel()
        if self.link is not None:
            self.link.abort("the simulation is over")
        if self._tasks:
            await asyncio.wait(self._tasks[:1], timeout=10)


class Sim:
    def __init__(self, head_address: str) -> None:
        self.head_address = head_address
        self.agents: list[SimAgent] = []
        self.rx_bytes = 0
        self.views = 0
        self.placed_on: dict[str, SimAgent] = {}
        self._died_seen: dict[str, float] = {}
        self.join_failures: list[str] = []  # agents whose connect failed
        self._waiting_for: dict[str, asyncio.Future] = {}  # actor id -> re-placed
        self._died_waiters: dict[str, asyncio.Future] = {}

    def on_created(self, actor_id: str, agent: SimAgent) -> None:
        fut = self._waiting_for.pop(actor_id, None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    def on_node_died(self, node_id: str) -> None:
        self._died_seen.setdefault(node_id, time.perf_counter())
        fut = self._died_waiters.pop(node_id, None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    async def join(self, n: int, resources: dict, deadline: float) -> int:
        """Connect and register n agents (64 dialling at a time); returns how many joined
        before ``deadline`` (time.perf_counter())."""
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                agent = SimAgent(self, i, resources)
                try:
                    await agent.start(self.head_address)
                except ConnectionError as exc:  # e.g. the head did not finish the handshake
                    self.join_failures.append(str(exc))
                    return
                self.agents.append(agent)

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), max(1.0, deadline - time.perf_counter()))
        except TimeoutError:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(self.agents)

    async def wait_views(self, n: int, timeout: float) -> bool:
        """Until every agent's last view lists n nodes (the head's broadcasts arrived)."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end and not self._died_seen:
            if all(len(a.view) == n for a in self.agents):
                return True
            await asyncio.sleep(0.2)
        return False

    def expect_replaced(self, actor_ids) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        futs = []
        for actor_id in actor_ids:
            fut = self._waiting_for[actor_id] = loop.create_future()
            futs.append(fut)
        return futs

    def expect_died(self, node_id: str) -> asyncio.Future:
        fut = self._died_waiters[node_id] = asyncio.get_running_loop().create_future()
        return fut


async def create_actors(head_address: str, count: int, resource_name: str,
                        window: int) -> tuple[float, object]:
    """Create ``count`` restartable actors through a driver link, each needing one
    ``resource_name`` to be placed and holding it, ``window`` creations in flight at a
    time (each from RegisterActor until WaitActor answers); returns (seconds until every one is
    alive, the driver link, which must stay open: its actors end with its job)."""
    hello = P.Hello(P.PROTOCOL_VERSION, TOKEN, "driver", "sim-driver", os.getpid(),
                    {"address": "", "namespace": "sim"})
    driver = await connect(head_address, hello, name="sim-driver->head")
    runner = asyncio.ensure_future(driver.run())
    driver.state["runner"] = runner
    job_id = driver.peer.info["job_id"]
    meta = {"class_name": "SimActor", "methods": {}, "signatures": {},
            "concurrency_groups": {}, "max_task_retries": 0, "max_restarts": -1,
            "lifetime": None}
    shape = {resource_name: 1.0}
    sem = asyncio.Semaphore(window)

    async def one() -> None:
        async with sem:
            actor_id = os.urandom(8).hex()
            reply = await driver.request(lambda r: P.RegisterActor(
                r, actor_id, "", "", False, job_id, meta), timeout=CONTROL_TIMEOUT)
            assert not reply.error, reply.error
            spec = {"class_blob": b"", "class_name": "SimActor", "args": b"",
                    "placement": shape, "hold": shape, "max_concurrency": 1,
                    "concurrency_groups": {}, "method_groups": {}, "is_async": False,
                    "job_id": job_id, "description": f"SimActor (actor {actor_id})",
                    "deps": []}
            driver.send(P.CreateActor(actor_id, spec))
            info = await driver.request(lambda r: P.WaitActor(r, actor_id), timeout=600)
            assert info.info.get("state") == "ALIVE", info.info

    start = time.perf_counter()
    await asyncio.gather(*[one() for _ in range(count)])
    return time.perf_counter() - start, driver


# --- one cluster size ---------------------------------------------------------------------
async def run_size(n: int, actors: int, idle_seconds: float, join_timeout: float,
                   node_timeout: float, window: int) -> dict:
    head = HeadProcess(node_timeout)
    me = psutil.Process()
    fig: dict = {"nodes": n, "head_pid": head.pid}
    sim = Sim(head.address)
    driver = None
    slots = float(math.ceil(1.25 * actors / n))
    resources = {"CPU": 8.0, "sim_slot": slots}
    try:
        cpu0, rx0, t0 = head.cpu(), sim.rx_bytes, time.perf_counter()
        sim_cpu0 = sum(me.cpu_times()[:2])
        joined = await sim.join(n, resources, t0 + join_timeout)
        settled = joined == n and await sim.wait_views(n, max(5.0, join_timeout - (
            time.perf_counter() - t0)))
        fig["join_s"] = time.perf_counter() - t0
        fig["joined"] = joined
        fig["join_failures"] = len(sim.join_failures)
        fig["died_during_join"] = len(sim._died_seen)
        if sim.join_failures:
            fig["join_failure_example"] = sim.join_failures[0]
        fig["join_head_cpu_s"] = head.cpu() - cpu0
        fig["join_bytes"] = sim.rx_bytes - rx0
        fig["join_sim_cpu_s"] = sum(me.cpu_times()[:2]) - sim_cpu0
        if not settled or sim._died_seen:
            fig["incomplete"] = (
                f"{joined} of {n} nodes joined in {fig['join_s']:.0f} s (limit "
                f"{join_timeout:g} s); {len(sim.join_failures)} failed to connect, "
                f"{len(sim._died_seen)} were declared dead by the head while joining")
            return fig
        fig["rss_joined_mb"] = head.rss() / 1e6
        await asyncio.sleep(2.0)  # the last heartbeats of the join settle

        # idle: only heartbeats flow
        cpu0, rx0, v0, t0 = head.cpu(), sim.rx_bytes, sim.views, time.perf_counter()
        sim_cpu0 = sum(me.cpu_times()[:2])
        await asyncio.sleep(idle_seconds)
        dt = time.perf_counter() - t0
        fig["idle_head_cpu_pct"] = 100.0 * (head.cpu() - cpu0) / dt
        fig["idle_bytes_per_s"] = (sim.rx_bytes - rx0) / dt
        fig["idle_views_per_s"] = (sim.views - v0) / dt
        fig["idle_sim_cpu_pct"] = 100.0 * (sum(me.cpu_times()[:2]) - sim_cpu0) / dt

        # placement of restartable actors, each holding one sim_slot
        cpu0, rx0, v0 = head.cpu(), sim.rx_bytes, sim.views
        seconds, driver = await create_actors(head.address, actors, "sim_slot", window)
        fig["actors"] = actors
        fig["window"] = window
        fig["place_s"] = seconds
        fig["place_per_s"] = actors / seconds
        fig["place_head_cpu_ms_per_actor"] = 1000.0 * (head.cpu() - cpu0) / actors
        fig["place_bytes_per_s"] = (sim.rx_bytes - rx0) / seconds
        fig["place_views"] = sim.views - v0
        per_node = [len(a.actors) for a in sim.agents]
        fig["nodes_used"] = sum(1 for c in per_node if c)
        fig["max_actors_per_node"] = max(per_node)
        fig["rss_placed_mb"] = head.rss() / 1e6

        # a node dies: its socket is torn down (no goodbye); its actors are placed again
        await asyncio.sleep(1.0)
        alive = [a for a in sim.agents if a.actors]
        victim = max(alive, key=lambda a: len(a.actors))
        lost = list(victim.actors)
        died = sim.expect_died(victim.node_id)
        replaced = sim.expect_replaced(lost)
        t0 = time.perf_counter()
        victim.crash()
        t_died = await asyncio.wait_for(died, 60)
        done = await asyncio.wait_for(asyncio.gather(*replaced), 120) if replaced else [t_died]
        fig["dead_socket_notice_s"] = t_died - t0
        fig["dead_socket_replace_s"] = max(done) - t0
        fig["dead_socket_actors"] = len(lost)

        # a node hangs: it stops heartbeating, its socket stays open
        alive = [a for a in sim.agents if a.actors and a is not victim]
        hung = max(alive, key=lambda a: len(a.actors))
        lost = list(hung.actors)
        died = sim.expect_died(hung.node_id)
        replaced = sim.expect_replaced(lost)
        t0 = time.perf_counter()
        hung.beating = False
        t_died = await asyncio.wait_for(died, node_timeout + 60)
        done = await asyncio.wait_for(asyncio.gather(*replaced), 120) if replaced else [t_died]
        fig["dead_heartbeat_notice_s"] = t_died - t0
        fig["dead_heartbeat_replace_s"] = max(done) - t0
        fig["dead_heartbeat_actors"] = len(lost)
        fig["node_timeout_s"] = node_timeout
        fig["rss_end_mb"] = head.rss() / 1e6
        return fig
    finally:
        if driver is not None:
            await driver.aclose()
            await asyncio.gather(driver.state["runner"], return_exceptions=True)
        await asyncio.gather(*[a.aclose() for a in sim.agents], return_exceptions=True)
        fig["head_exit_code"] = head.stop()
        fig["head_exited"] = not psutil.pid_exists(head.pid) or \
            psutil.Process(head.pid).status() == psutil.STATUS_ZOMBIE


# --- output -------------------------------------------------------------------------------
COLUMNS = [
    ("nodes", "nodes", "{:d}"),
    ("join_s", "join s", "{:.1f}"),
    ("join_bytes", "join MB", "{:.1f}", 1e-6),
    ("idle_head_cpu_pct", "idle head CPU %", "{:.1f}"),
    ("idle_bytes_per_s", "idle B/s sent", "{:.0f}"),
    ("place_per_s", "actors/s", "{:.0f}"),
    ("place_head_cpu_ms_per_actor", "head ms/actor", "{:.3f}"),
    ("place_bytes_per_s", "place MB/s sent", "{:.1f}", 1e-6),
    ("nodes_used", "nodes used", "{:d}"),
    ("dead_socket_notice_s", "dead (socket) s", "{:.2f}"),
    ("dead_socket_replace_s", "re-placed s", "{:.2f}"),
    ("dead_heartbeat_notice_s", "dead (no hb) s", "{:.2f}"),
    ("dead_heartbeat_replace_s", "re-placed s", "{:.2f}"),
    ("rss_placed_mb", "head RSS MB", "{:.0f}"),
]


def table(rows: list[dict]) -> str:
    head = [c[1] for c in COLUMNS]
    body = []
    for row in rows:
        cells = []
        for col in COLUMNS:
            key, fmt = col[0], col[2]
            value = row.get(key)
            if value is None:
                cells.append("-")
                continue
            if len(col) > 3:
                value = value * col[3]
            cells.append(fmt.format(value))
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(head)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(head, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    for row in rows:
        if row.get("incomplete"):
            lines.append(f"N={row['nodes']}: {row['incomplete']}")
    return "\n".join(lines)


def main() -> int:
    if "--run-head" in sys.argv:
        run_head()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="N = 10, 100 with 2,000 actors and 5 s of idle")
    parser.add_argument("--sizes", help="comma-separated N (default 10,100,1000,3000)")
    parser.add_argument("--actors", type=int, help="actors to place (default 20,000; "
                        "--quick 2,000)")
    parser.add_argument("--idle-seconds", type=float, help="idle window (default 10; "
                        "--quick 5)")
    parser.add_argument("--join-timeout", type=float, default=300.0,
                        help="give up on a size whose nodes have not all joined by then")
    parser.add_argument("--node-timeout", type=float, default=3.0,
                        help="the head's ARAY_NODE_TIMEOUT: a node silent this long is dead")
    parser.add_argument("--window", type=int, default=200,
                        help="actor creations in flight at a time (default 200)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
             else [10, 100] if args.quick else [10, 100, 1000, 3000])
    actors = args.actors or (2000 if args.quick else 20000)
    idle = args.idle_seconds or (5.0 if args.quick else 10.0)
    _raise_fd_limit()
    rows = []
    for n in sizes:
        print(f"N={n} ...", file=sys.stderr, flush=True)
        row = asyncio.run(run_size(n, actors, idle, args.join_timeout, args.node_timeout,
                                       args.window))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"sizes": rows}, f, indent=1)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
