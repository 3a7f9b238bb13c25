"""The head's tables as plain data: nodes and jobs. No I/O, testable on its own."""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class NodeInfo:
    node_id: str
    address: str
    ip: str
    total: dict
    available: dict
    alive: bool = True
    joined_at: float = dataclasses.field(default_factory=time.time)


class NodeTable:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}

    def join(self, node_id: str, address: str, ip: str, total: dict) -> NodeInfo:
        info = NodeInfo(node_id, address, ip, dict(total), dict(total))
        self.nodes[node_id] = info
        return info

    def update_available(self, node_id: str, available: dict) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.available = dict(available)

    def mark_dead(self, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.alive = False

    def alive(self) -> list[NodeInfo]:
        return [n for n in self.nodes.values() if n.alive]

    def view(self) -> list:
        """What node agents need to know of each other: [node_id, address, totals]."""
        return [[n.node_id, n.address, n.total] for n in self.alive()]

    def describe(self) -> list[dict]:
        """One dict per node with Ray's keys (``NodeID``, ``Alive``, ``Resources`` ...)."""
        out = []
        for n in self.nodes.values():
            resources = dict(n.total)
            resources[f"node:{n.ip}"] = 1.0
            out.append({
                "NodeID": n.node_id,
                "Alive": n.alive,
                "alive": n.alive,
                "NodeManagerAddress": n.ip,
                "NodeManagerHostname": n.ip,
                "NodeName": n.ip,
                "AgentAddress": n.address,
                "Resources": resources,
                "Available": dict(n.available) if n.alive else {},
            })
        return out


class JobTable:
    def __init__(self) -> None:
        self._next = 1
        self.jobs: dict[str, dict] = {}

    def new_job(self, pid: int) -> str:
        job_id = self._next.to_bytes(4, "little").hex()
        self._next += 1
        self.jobs[job_id] = {"job_id": job_id, "driver_pid": pid, "start_time": time.time(),
                             "alive": True}
        return job_id

    def finish(self, job_id: str) -> None:
        if job_id in self.jobs:
            self.jobs[job_id]["alive"] = False
            self.jobs[job_id]["end_time"] = time.time()
