"""What a Ray user expects of actor classes and handles: arguments checked at the call site
before anything is submitted, the class's own attributes through its name, methods listed
by ``dir``, and an actor that ends when its last handle is gone."""

import os
import time

import psutil
import pytest
from conftest import stays_true, wait_until

import aray

pytestmark = pytest.mark.usefixtures("cluster")


@aray.remote(num_cpus=0)
class Limited:
    LIMIT = 3

    def __init__(self, start, *, step=1):
        self.value = start
        self.step = step

    def add(self, n):
        # the decorated class's name reaches its class attribute and static method
        self.value = min(self.value + n * self.step, Limited.LIMIT)
        return Limited.clamp(self.value)

    @staticmethod
    def clamp(x):
        return max(0, x)

    @classmethod
    def limit(cls):
        return cls.LIMIT


def test_constructor_and_method_arguments_are_checked_at_the_call_site():
    with pytest.raises(TypeError, match=r"Limited.remote\(\): missing a required argument"):
        Limited.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        Limited.remote(1, 2)
    actor = Limited.remote(0, step=1)
    with pytest.raises(TypeError, match=r"Limited.add.remote\(\): missing a required argument"):
        actor.add.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'm'"):
        actor.add.remote(1, m=1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        actor.clamp.remote(1, 2)  # a static method has no self to take the first
    assert aray.get([actor.add.remote(1), actor.clamp.remote(-5), actor.limit.remote()]) == [
        1, 0, 3]


def test_a_handle_passed_to_a_task_checks_there_too():
    @aray.remote
    def misuse(handle):
        try:
            handle.add.remote(1, 2)
        except TypeError as exc:
            return str(exc)
        return "no error"

    actor = Limited.remote(0)
    assert "too many positional arguments" in aray.get(misuse.remote(actor))


def test_the_class_name_reaches_class_attributes_inside_methods():
    actor = Limited.remote(2)
    assert aray.get(actor.add.remote(5)) == 3  # capped by Limited.LIMIT
    assert Limited.LIMIT == 3 and Limited.clamp(-1) == 0  # and from the driver
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = Limited.nope


def test_dir_of_a_handle_lists_its_methods():
    names = dir(Limited.remote(0))
    assert {"add", "clamp", "limit"} <= set(names)
    assert "actor_id" in names


@aray.remote(num_cpus=0)
class Pid:
    def pid(self):
        return os.getpid()


def test_an_actor_whose_handles_are_all_gone_exits(tmp_path):
    actor = Pid.remote()
    pid = aray.get(actor.pid.remote())
    del actor
    wait_until(lambda: not psutil.pid_exists(pid), 30, message="the actor's process to exit")

    # a handle that another process holds keeps the actor, until that one lets go too
    @aray.remote(num_cpus=0)
    def hold(boxed, release):
        while not os.path.exists(release):
            time.sleep(0.02)
        return aray.get(boxed[0].pid.remote())

    actor = Pid.remote()
    pid = aray.get(actor.pid.remote())
    release = str(tmp_path / "release")
    held = hold.remote([actor], release)
    del actor
    stays_true(lambda: psutil.pid_exists(pid), 1.0, message="the borrowed handle keeps it")
    open(release, "w").close()
    assert aray.get(held, timeout=30) == pid
    wait_until(lambda: not psutil.pid_exists(pid), 30, message="the actor's process to exit")


def test_named_and_detached_actors_outlive_their_handles():
    named = Pid.options(name="keeps-on").remote()
    pid = aray.get(named.pid.remote())
    del named
    stays_true(lambda: psutil.pid_exists(pid), 1.0, message="a named actor stays")
    again = aray.get_actor("keeps-on")
    assert aray.get(again.pid.remote()) == pid
    aray.kill(again)
