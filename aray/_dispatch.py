"""One way to hand messages to their handlers, in every process.

A component handles message ``X`` (a class of :mod:`aray._protocol`) in a method named
``_on_X``: the class name as it is, so that one search finds a message, its senders and its
handler. :class:`Dispatcher` maps message types to those methods once, and for each message
a link delivers, checks that the link's peer may send it to this kind of process (the
message's ``ROUTES``) before it calls the handler.

A message from a peer that may not send it (a worker sending ``ClusterViewChanged`` to its
node agent, say) is refused: for a request, the sender gets the error as its reply; either
way it is logged (at a bounded rate) and nothing else happens.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from . import _protocol as P
from ._periodic import RateLimitedLog

log = logging.getLogger("aray.dispatch")


class Refused(PermissionError):
    """A message its sender may not send here, or that nothing here handles."""


class Dispatcher:
    """Calls ``component._on_<Message>(link, msg)`` for messages a ``role`` process gets.

    Examples:
        >>> class Agent:
        ...     def _on_Heartbeat(self, link, msg):
        ...         return "beat"
        >>> dispatch = Dispatcher("head", Agent())
        >>> sorted(t.__name__ for t in dispatch.handlers)
        ['Heartbeat']
    """

    def __init__(self, role: str, *components: Any) -> None:
        assert role in P.RECEIVER_ROLES, role
        self.role = role
        self.handlers: dict[P.MessageClass, Any] = {}
        for component in components:
            self.add(component)
        self._refusals = RateLimitedLog(log)

    def add(self, component: Any) -> None:
        """Dispatch to ``component``'s ``_on_<Message>`` methods too (a later one wins)."""
        for cls in P.message_types().values():
            handler = getattr(component, "_on_" + cls.__name__, None)
            if handler is not None:
                assert (cls.REPLY is False and any(r == self.role for _, r in cls.ROUTES)), (
                    f"{type(component).__name__} handles {cls.__name__}, which is never "
                    f"sent to a {self.role} (see its routes)")
                self.handlers[cls] = handler

    def __call__(self, link, msg) -> Any:
        cls = cast(P.MessageClass, type(msg))  # links deliver what decode made: registered
        sender = link.peer_role
        handler = self.handlers.get(cls)
        if handler is None or (sender, self.role) not in cls.ROUTES:
            why = (f"a {sender or 'peer'} may not send {cls.__name__} to a {self.role}"
                   if handler is not None else f"a {self.role} does not handle {cls.__name__}")
            self._refusals(logging.WARNING, "refused a message on link %s: %s", link.name, why)
            if cls.REQUEST and msg.req_id:  # (a request's first field is its req_id)
                raise Refused(why)  # the link answers the request with this error
            return None
        return handler(link, msg)
