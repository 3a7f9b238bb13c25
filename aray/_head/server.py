"""The head service: node agents register and report here; drivers get a job id and ask
for the cluster's state. It is the control plane only: no task passes through it."""

from __future__ import annotations

import logging

from .. import _protocol as P
from .._link import Link, Server
from .state import JobTable, NodeTable

log = logging.getLogger("aray.head")


class Head:
    def __init__(self, token: str) -> None:
        self.nodes = NodeTable()
        self.jobs = JobTable()
        self.server = Server(token, self._on_hello, name="head")
        self._node_links: dict[Link, str] = {}

    async def start(self, address: str) -> str:
        return await self.server.start(address)

    async def aclose(self) -> None:
        await self.server.aclose()

    def _on_hello(self, link: Link, hello: P.Hello) -> dict:
        link.on_message = self._dispatch
        if hello.role == "node":
            self._node_links[link] = hello.ident
            link.on_close.append(self._on_node_lost)
            return {}
        job_id = self.jobs.new_job(hello.pid)
        link.on_close.append(lambda _l: self.jobs.finish(job_id))
        return {"job_id": job_id}

    def _dispatch(self, link: Link, msg) -> None:
        handler = getattr(self, "_on_" + type(msg).__name__, None)
        if handler is None:
            log.warning("head: unexpected %s", type(msg).__name__)
        else:
            handler(link, msg)

    def _on_RegisterNode(self, link: Link, msg: P.RegisterNode) -> None:
        self.nodes.join(msg.node_id, msg.address, msg.ip, msg.resources)
        log.info("node %s joined with %s", msg.node_id[:12], msg.resources)
        self._broadcast_view()

    def _on_NodeResourcesChanged(self, link: Link, msg: P.NodeResourcesChanged) -> None:
        self.nodes.update_available(msg.node_id, msg.available)

    def _on_GetClusterState(self, link: Link, msg: P.GetClusterState) -> None:
        link.send(P.ClusterState(msg.req_id, self.nodes.describe()))

    def _on_node_lost(self, link: Link) -> None:
        node_id = self._node_links.pop(link, None)
        if node_id is not None:
            self.nodes.mark_dead(node_id)
            log.warning("node %s left the cluster", node_id[:12])
            self._broadcast_view()

    def _broadcast_view(self) -> None:
        view = P.ClusterViewChanged(self.nodes.view())
        for link in self._node_links:
            if not link.closed:
                link.send(view)
