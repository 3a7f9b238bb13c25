"""``aray.runtime_env``: Ray's :class:`RuntimeEnv`, a checked dict of a runtime env's fields.

Example:
    >>> from aray.runtime_env import RuntimeEnv
    >>> RuntimeEnv(env_vars={"MODE": "fast"})
    {'env_vars': {'MODE': 'fast'}}
"""

from ._runtime_env import RuntimeEnv

__all__ = ["RuntimeEnv"]
