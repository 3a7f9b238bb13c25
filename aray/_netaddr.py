"""Addresses of a cluster that spans machines: a head reached by a name, and the address a
joining node gives the others.

A head's address may be a DNS name (``aray start --address aray-head:6379``, a Kubernetes
Service): it stays a name everywhere it is kept, and every dial resolves it anew
(:class:`DialResolver`), so that a head restarted elsewhere under the same name is found
again. A node that joins a head on another machine and is not told its own address
(``--node-ip-address``) takes the one of its interface that routes to the head
(:func:`default_node_ip`).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

if TYPE_CHECKING:  # (a name of aiohttp's types only: older versions lack it)
    from aiohttp.abc import ResolveResult

log = logging.getLogger("aray.netaddr")

#: what a node that joins a head on this machine (or starts one) listens on by default
LOOPBACK = "127.0.0.1"


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP address) is one of this machine's loopback addresses.

    Example:
        >>> is_loopback("127.0.0.2"), is_loopback("::1"), is_loopback("10.1.2.3")
        (True, True, False)
    """
    return ipaddress.ip_address(address).is_loopback


def resolve(host: str, port: int = 0) -> list[str]:
    """The IP addresses ``host`` (a name or an address) resolves to now, IPv4 first, each
    once; raises ValueError, naming the host, when it resolves to none.

    Example:
        >>> resolve("localhost")[0]
        '127.0.0.1'
        >>> resolve("10.1.2.3")
        ['10.1.2.3']
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve the head's host name {host!r}: {exc.strerror}. "
                         "Check the name (on Kubernetes: the head's Service and "
                         "namespace)") from None
    families = {str(info[4][0]): info[0] for info in infos}  # each address once
    return sorted(families, key=lambda address: families[address] != socket.AF_INET)


def route_source(address: str, port: int = 9) -> str:
    """The address of this machine's interface that the routing table picks for packets
    to ``address``: a UDP socket "connected" there (which sends nothing) is bound to it.

    Example:
        >>> route_source("127.0.0.1")
        '127.0.0.1'
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((address, port or 9))
        return sock.getsockname()[0]


def choose_node_ip(head_addresses: Iterable[str],
                   source_of: Callable[[str], str] = route_source) -> str:
    """The address a node gives the cluster, from the addresses its head's host resolves
    to: 127.0.0.1 when the head is on this machine's loopback (a cluster of one machine),
    else the source address of the route to the first one (``source_of`` finds it).

    Example:
        >>> choose_node_ip(["127.0.0.1"])
        '127.0.0.1'
        >>> choose_node_ip(["10.96.0.12"], source_of=lambda ip: "10.244.1.7")
        '10.244.1.7'
    """
    addresses = list(head_addresses)
    if not addresses:
        raise ValueError("the head's host resolves to no address")
    if any(is_loopback(a) for a in addresses):
        return LOOPBACK
    return source_of(addresses[0])


def node_ip_for(head_host: str, head_port: int = 6379) -> str:
    """The address a node that joins the head at ``head_host`` listens on and gives the
    others, when ``--node-ip-address`` is not given (see :func:`choose_node_ip`).

    Example:
        >>> node_ip_for("localhost", 6379)
        '127.0.0.1'
    """
    return choose_node_ip(resolve(head_host, head_port),
                          lambda address: route_source(address, head_port))


def default_node_ip(join: str) -> str:
    """``aray start``'s ``--node-ip-address`` when not given: 127.0.0.1 for a head (``join``
    "") or a node joining a head on this machine's loopback; else this machine's address
    on the route to the head at ``join`` (``tcp://HOST:PORT``, HOST resolved now).

    Example:
        >>> default_node_ip(""), default_node_ip("tcp://localhost:6379")
        ('127.0.0.1', '127.0.0.1')
    """
    if not join:
        return LOOPBACK
    from ._link import parse_address

    _, host, port = parse_address(join)
    return node_ip_for(host, port)


class DialResolver(AbstractResolver):
    """The resolver of one dial: a link dialled by name resolves it then, never from an
    earlier answer, and the log says when a name's answer changed (a head that came back
    elsewhere). IP addresses are not resolved (aiohttp asks only for names). Underneath,
    the system's resolver (``getaddrinfo`` in a thread: /etc/hosts, then DNS with the
    search domains of /etc/resolv.conf, as a Kubernetes pod needs), which holds nothing to
    close.

    Example:
        >>> async def main():
        ...     resolver = DialResolver()
        ...     try:
        ...         return (await resolver.resolve("localhost", 6379))[0]["host"]
        ...     finally:
        ...         await resolver.close()
        >>> import asyncio
        >>> asyncio.run(main())
        '127.0.0.1'
    """

    #: name -> the addresses it last resolved to, in this process
    last: dict[str, list[str]] = {}

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        found = [str(r["host"]) for r in results]
        before = DialResolver.last.get(host)
        DialResolver.last[host] = found
        if before is not None and set(before) != set(found):
            log.info("%s resolves to %s now (was %s)", host, ", ".join(found),
                     ", ".join(before))
        else:
            log.debug("resolved %s to %s", host, ", ".join(found))
        return results

    async def close(self) -> None:
        await self._inner.close()
