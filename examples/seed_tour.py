"""A tour of the seed tutorial ("Python 分布式计算框架 Ray", 2021) on aray.

Every code snippet of the tutorial runs here, in its order, with `aray` in place of `ray`
and its typos mended: the asserts compare with `==` and have their comma, the mis-indented
`regular_function` is indented, and the custom-resource example uses one pair of resource
names throughout. docs/seed.md is the same tutorial translated, with explanations.

Run it with:

    python examples/seed_tour.py
"""

import datetime
import random
import time
from collections import defaultdict

import numpy as np

import aray

# -- Starting and stopping a runtime -------------------------------------------------------
# The tutorial's variants of ray.init(), on aray:
#   aray.init()                                  a runtime with all of this machine's CPUs
#   aray.init(num_cpus=8)                        a runtime that offers 8 CPUs
#   aray.init(_redis_password="P.4.redis")       accepted: the password becomes the token
#   aray.init(address="auto", _redis_password="P.4.redis")
#                                                join a cluster started with `aray start`
#   aray.init(address="ray://192.168.21.156:10001")   Ray Client, from another machine:
#                                                aray's client mode is
#   aray.init(address="aray://192.168.21.156:6379", token="P.4.redis")
#                                                (the head's own port, and its token)
#   aray.shutdown()
# This tour keeps to 2 CPUs, and shows that a password is accepted:
aray.init(num_cpus=2, _redis_password="P.4.redis")
aray.shutdown()

# A ray:// address is refused at once, with the aray:// address to write instead (there is
# no head at 192.168.21.156 here to connect to in client mode: see docs/cluster.md).
try:
    aray.init(address="ray://192.168.21.156:10001")
except ValueError as err:
    print("ray:// address:", err)

# The tutorial's shell commands (`ray start --head --port=6379 ...`, `ray stop`) are not
# Python. aray has them as `aray start --head ...` and `aray stop`, for a cluster on this
# machine: see examples/cluster.py, which starts one, uses it and stops it.

aray.init(num_cpus=2)


# -- Distributed programming: a remote function ---------------------------------------------
@aray.remote
def f(x):
    return x * x


f_obj_id = f.remote(4)
result = aray.get(f_obj_id)

assert result == 16, "FAILURE: something is wrong, result should be 16"
print("remote function f(4):", result)


# -- Distributed programming: an actor ------------------------------------------------------
@aray.remote
class AnActor:
    def f(self, x):
        return x * x


actor = AnActor.remote()
f_obj_id = actor.f.remote(4)
result = aray.get(f_obj_id)

assert result == 16, "FAILURE: something is wrong, result should be 16"
print("actor method f(4):", result)


# -- Concepts: remote functions -------------------------------------------------------------
# A regular Python function.
def regular_function(x):
    result = x * x
    return result


result = regular_function(2)


# A remote function.
@aray.remote
def remote_function(x):
    result = x * x
    return result


task_obj_id = remote_function.remote(2)
result = aray.get(task_obj_id)
assert result == regular_function(2) == 4
print("regular_function(2) and remote_function.remote(2):", result)


# -- Concepts: task dependencies ------------------------------------------------------------
@aray.remote
def f(x):
    return x


x1_id = f.remote(1)
y1_id = f.remote(x1_id)  # runs once x1_id is ready, and receives 1, not the ref
assert aray.get(y1_id) == 1
y2_id = f.remote(x1_id)
assert aray.get(y2_id) == 1
print("task dependencies: f(f(1)) =", aray.get(y1_id))


# -- Concepts: nested remote functions ------------------------------------------------------
@aray.remote
def f():
    return 1


@aray.remote
def g():
    # Call f 4 times and return the resulting object refs.
    return [f.remote() for _ in range(4)]


@aray.remote
def h():
    # Call f 4 times, block until those 4 tasks finish,
    # retrieve the results, and return the values.
    return aray.get([f.remote() for _ in range(4)])


assert aray.get(aray.get(g.remote())) == [1, 1, 1, 1]
assert aray.get(h.remote()) == [1, 1, 1, 1]
print("nested tasks: g ->", aray.get(aray.get(g.remote())), " h ->", aray.get(h.remote()))


# -- Concepts: actors -----------------------------------------------------------------------
@aray.remote
class Example:
    def __init__(self, x):
        self.x = x

    def set(self, x):
        self.x = x

    def get(self):
        return self.x


e = Example.remote(1)
print("e.set.remote(2) returns", type(e.set.remote(2)).__name__,
      "and e.get.remote() returns", type(e.get.remote()).__name__)
assert aray.get(e.set.remote(2)) is None
assert aray.get(e.get.remote()) == 2
print("actor Example after set(2): get() =", aray.get(e.get.remote()))


# -- Concepts: aray.wait --------------------------------------------------------------------
# ready_ids, remaining_ids = aray.wait(object_ids, num_returns=1, timeout=None)
# The tutorial gives the timeout in milliseconds, as early Ray did; aray uses seconds.
@aray.remote
def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


object_ids = [sleep_for.remote(s) for s in (0.1, 1.0)]
ready_ids, remaining_ids = aray.wait(object_ids, num_returns=1, timeout=None)
assert ready_ids == object_ids[:1] and remaining_ids == object_ids[1:]
print("aray.wait: ready", aray.get(ready_ids), "- 1 remaining")


# -- Concepts: aray.put ---------------------------------------------------------------------
@aray.remote
def f(x):
    return x.shape


x = np.zeros(1000)
f.remote(x)  # the array travels with the task...

x_id = aray.put(x)  # ...much as if it had been put first
f.remote(x_id)

for _ in range(10):  # serializes (and, if large, stores) the array 10 times
    f.remote(x)

x_id = aray.put(x)  # better: store it once, pass the ref
shapes = aray.get([f.remote(x_id) for i in range(10)])
assert shapes == [(1000,)] * 10
print("aray.put once, 10 tasks read it:", shapes[0])


# -- Concepts: custom resources -------------------------------------------------------------
# The tutorial starts Ray with num_cpus=8 and names the resources CPUResource1/2 here but
# CustomResource1/2 below; this tour uses 2 CPUs and the second pair of names.
aray.shutdown()
aray.init(num_cpus=2, resources={"CustomResource1": 1, "CustomResource2": 4})


@aray.remote(resources={"CustomResource1": 2})
def f(x):
    time.sleep(0.1)
    return x


@aray.remote(resources={"CustomResource2": 3})
def g(x):
    time.sleep(0.1)
    return x * x


# g needs 3 CustomResource2, and there are 4: it runs.
g_obj_id = g.remote(2)
print("g needs 3 of 4 CustomResource2:", aray.get(g_obj_id))

# f needs 2 CustomResource1, and there is 1: it cannot run, and stays pending. aray logs a
# warning ("The task f cannot be scheduled right now. ..."), as Ray does. aray.get would
# wait forever, so wait with a timeout instead.
f_obj_id = f.remote(2)
ready, not_ready = aray.wait([f_obj_id], timeout=1)
assert ready == [] and not_ready == [f_obj_id]
print("f needs 2 of 1 CustomResource1: not ready after 1 s (aray logged a warning on stderr)")
aray.cancel(f_obj_id)  # give up on it
aray.shutdown()

# -- Q&A ------------------------------------------------------------------------------------
aray.init(num_cpus=2)


# Q10: one actor collects the logs of many tasks.
# definition of LoggingActor
@aray.remote
class LoggingActor:
    def __init__(self):
        self.logs = defaultdict(lambda: [])

    def log(self, index, message):
        message = message + datetime.datetime.now().strftime("  %Y%m%d %H:%M:%S")
        self.logs[index].append(message)

    def get_logs(self):
        return dict(self.logs)


# usage of LoggingActor
logging_actor = LoggingActor.remote()
logging_actor.log.remote(1, "logging something from another process.")

# get logs somewhere in cluster
logs = logging_actor.get_logs.remote()
logs = aray.get(logs)
print("Q10 logs:", logs)
# (examples/logging_actor.py has many tasks log to one such actor.)


# Q12: process results in the order they finish.
@aray.remote
def f():
    time.sleep(random.uniform(0, 0.2))
    return time.time()


start_time = time.time()

remaining_result_ids = [f.remote() for _ in range(10)]

# Get the results.
results = []
while len(remaining_result_ids) > 0:
    result_ids, remaining_result_ids = aray.wait(remaining_result_ids, num_returns=1)
    result = aray.get(result_ids[0])
    results.append(result)
    print(f"Processing result which finished after {result - start_time:.3f} seconds.")

end_time = time.time()
duration = end_time - start_time
print(f"Q12: 10 results in {duration:.2f} s, in the order they finished")

aray.shutdown()
