"""Utilities built on the public API: :class:`ActorPool`."""

from __future__ import annotations

from ._actor_pool import ActorPool

__all__ = ["ActorPool"]
