"""Health checks that a supervisor asks without the cluster's token (Kubernetes' liveness
and readiness probes), and waiting until a cluster has its nodes (``aray status --wait``).

The head's port and each node agent's TCP port answer two paths, besides their links:

* ``GET /healthz``: 200 ``ok`` while the process serves (its event loop answers);
* ``GET /readyz``: on the head, 200 once at least ``--min-nodes`` nodes are alive (the
  head's own node counts), else 503; on a node agent, 200 while its link to the head is
  open, else 503.

They answer a status and a word, nothing else: no count, no id, no address, no version.
Everything else on those ports still needs the token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

HEALTHZ = "/healthz"
READYZ = "/readyz"

Probe = Callable[[], tuple[int, str]]


def _alive() -> tuple[int, str]:
    return 200, "ok\n"


def head_probes(head: Any, min_nodes: int = 1) -> dict[str, Probe]:
    """The probes of a head (an :class:`aray._head.server.Head`): ready once
    ``min_nodes`` nodes are alive.

    Example:
        >>> from aray._head.server import Head
        >>> head = Head(token="t")
        >>> head_probes(head, min_nodes=1)["/readyz"]()
        (503, 'waiting for nodes\\n')
        >>> _ = head.nodes.join("n1", "tcp://127.0.0.1:1", "127.0.0.1", {"CPU": 1.0})
        >>> head_probes(head, min_nodes=1)["/readyz"]()
        (200, 'ready\\n')
    """
    def ready() -> tuple[int, str]:
        alive = sum(1 for _ in head.nodes.iter_alive())
        return (200, "ready\n") if alive >= min_nodes else (503, "waiting for nodes\n")

    return {HEALTHZ: _alive, READYZ: ready}


def agent_probes(agent: Any) -> dict[str, Probe]:
    """The probes of a node agent (an :class:`aray.node.agent.NodeAgent`): ready while
    its link to the head is open.

    Example:
        >>> from aray.node.agent import NodeAgent
        >>> agent = NodeAgent(token="t", session_dir="/tmp/s", store_dir="/dev/shm/x",
        ...                   resources={"CPU": 1}, head_address="tcp://aray-head:6379")
        >>> agent_probes(agent)["/readyz"]()  # not started: no link to its head
        (503, 'not connected to the head\\n')
    """
    def ready() -> tuple[int, str]:
        head = agent.head
        if head is None or head.closed or getattr(head, "restarting", False):
            return 503, "not connected to the head\n"
        return 200, "ready\n"

    return {HEALTHZ: _alive, READYZ: ready}


def check_min_nodes(value: int | None, joining: bool) -> int:
    """``aray start --min-nodes``, checked: a count of at least 1 (the head's own node is
    one), for a head only; 1 when not given.

    Example:
        >>> check_min_nodes(None, joining=False), check_min_nodes(3, joining=False)
        (1, 3)
        >>> check_min_nodes(2, joining=True)
        Traceback (most recent call last):
        ...
        ValueError: --min-nodes is the head's: give it to `aray start --head`
    """
    if value is None:
        return 1
    if joining:
        raise ValueError("--min-nodes is the head's: give it to `aray start --head`")
    if value < 1:
        raise ValueError(f"--min-nodes must be 1 or more (the head's own node counts), not "
                         f"{value}")
    return value


def wait_for_nodes(count: int, timeout: float, alive_nodes: Callable[[], list[dict]],
                   interval: float = 0.5) -> list[dict]:
    """Ask ``alive_nodes()`` (the cluster's alive nodes, as ``aray status`` gets them) until
    there are at least ``count``; returns them. A head that does not answer yet (one still
    starting, or being restarted) is asked again; a wrong token is not.

    Raises TimeoutError after ``timeout`` seconds, saying how many nodes were alive, or
    why the head could not be asked.

    Example:
        >>> wait_for_nodes(1, 5, lambda: [{"NodeID": "n1"}])
        [{'NodeID': 'n1'}]
        >>> wait_for_nodes(2, 0.1, lambda: [{"NodeID": "n1"}], interval=0.05)
        Traceback (most recent call last):
        ...
        TimeoutError: timed out after 0.1 s waiting for 2 nodes: 1 alive
    """
    from .exceptions import AuthenticationError

    deadline = time.monotonic() + timeout
    while True:
        try:
            nodes = alive_nodes()
            seen = f"{len(nodes)} alive"
            if len(nodes) >= count:
                return nodes
        except AuthenticationError:
            raise
        except ConnectionError as exc:
            seen = f"the head did not answer ({exc})"
        if time.monotonic() + interval > deadline:
            noun = "node" if count == 1 else "nodes"
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {count} {noun}: "
                               f"{seen}")
        time.sleep(interval)
