"""The cluster view: the head sends each agent the whole view once, when it registers, and
then only what changed; every agent's view stays the head's."""

import asyncio
import os

import pytest
from conftest import async_wait_until

from aray import _protocol as P
from aray._dispatch import Dispatcher
from aray._head.server import Head
from aray._link import connect
from aray.node.lease_scheduler import LeaseScheduler
from aray.node.leasing import Leasing

pytestmark = pytest.mark.anyio


class Agent:
    """A node agent's link to the head with the agent's own view handling (Leasing), and
    what it was sent."""

    def __init__(self, name: str, resources: dict) -> None:
        self.node_id = name
        self.resources = resources
        self.leasing = Leasing(LeaseScheduler(resources), None, name, {}, lambda: None,
                               None)
        self.received: list = []
        self.link = None
        self.task = None

    async def join(self, head_address: str) -> None:
        hello = P.Hello(P.PROTOCOL_VERSION, "t", "node", self.node_id, os.getpid(), {})
        self.link = await connect(head_address, hello)
        dispatch = Dispatcher("node", self.leasing)

        def on_message(link, msg):
            self.received.append(msg)
            if isinstance(msg, (P.ClusterViewChanged, P.ClusterViewUpdated)):
                dispatch(link, msg)

        self.link.on_message = on_message
        self.task = asyncio.ensure_future(self.link.run())
        self.link.send(P.RegisterNode(self.node_id, f"tcp://{self.node_id}:1", "127.0.0.1",
                                      self.resources, {}))

    def report(self, available: dict) -> None:
        self.link.send(P.NodeResourcesChanged(self.node_id, available))

    async def die(self) -> None:
        await self.link.aclose()
        await self.task


async def test_every_agents_view_is_the_heads_after_joins_changes_and_deaths(tmp_path):
    head = Head("t")
    address = await head.start(f"unix:{tmp_path}/head.sock")
    agents = {}

    async def settled(head_shows=lambda view: True):
        await async_wait_until(lambda: head_shows(head.nodes.view()), 10,
                               message="the head to hear of the changes")

        def same():
            view = head.nodes.view()
            return all(list(a.leasing.view.values()) == view
                       and a.leasing.scheduler.view.others == [n for n in view if n[0] != name]
                       for name, a in agents.items())
        await async_wait_until(same, 10, message="every agent to hold the head's view")

    try:
        for name in ("a", "b", "c"):
            agents[name] = Agent(name, {"CPU": 4.0})
            await agents[name].join(address)
            await settled()
        agents["a"].report({"CPU": 1.0})
        agents["c"].report({"CPU": 0.0})
        await settled(lambda view: [n[3] for n in view] == [
            {"CPU": 1.0}, {"CPU": 4.0}, {"CPU": 0.0}])
        await agents.pop("b").die()  # a node in the middle leaves
        await settled(lambda view: len(view) == 2)
        agents["d"] = Agent("d", {"CPU": 2.0, "GPU": 1.0})
        await agents["d"].join(address)
        agents["d"].report({"CPU": 2.0, "GPU": 0.0})
        agents["a"].report({"CPU": 3.0})
        await settled(lambda view: [n[0] for n in view] == ["a", "c", "d"]
                      and view[0][3] == {"CPU": 3.0} and view[2][3] == {"CPU": 2.0, "GPU": 0.0})
        for _ in range(20):  # a burst of changes reaches every agent as its last state
            agents["c"].report({"CPU": 2.0})
            agents["c"].report({"CPU": 4.0})
        await agents.pop("a").die()
        await settled(lambda view: [n[0] for n in view] == ["c", "d"]
                      and view[0][3] == {"CPU": 4.0})

        # each agent got the whole view once (when it registered), then only changes,
        # none of them larger than the nodes that changed
        for agent in agents.values():
            full = [m for m in agent.received if isinstance(m, P.ClusterViewChanged)]
            assert len(full) == 1
            updates = [m for m in agent.received if isinstance(m, P.ClusterViewUpdated)]
            assert updates and all(len(m.changed) + len(m.removed) <= 2 for m in updates)
    finally:
        for agent in agents.values():
            if not agent.link.closed:
                await agent.die()
        await head.aclose()
