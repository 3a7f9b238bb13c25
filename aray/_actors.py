"""Actors: stateful workers made from classes with ``@aray.remote``."""

from __future__ import annotations

ACTOR_OPTIONS = {
    "num_cpus": None,
    "num_gpus": 0,
    "resources": None,
    "memory": 0,
    "max_concurrency": None,
    "max_restarts": 0,
    "max_task_retries": 0,
    "name": None,
    "namespace": None,
    "lifetime": None,
    "get_if_exists": False,
    "concurrency_groups": None,
}


def make_actor_class(cls, options: dict):
    raise NotImplementedError(
        f"@aray.remote on a class ({cls.__name__}) makes an actor, and actors are not "
        "available in this version of aray yet")
