"""The seed tutorial's examples, as written (with aray for ray and its typos mended)."""

import time

import numpy as np
import pytest

import aray as ray

pytestmark = pytest.mark.usefixtures("cluster")


def test_remote_function():
    @ray.remote
    def f(x):
        return x * x

    f_obj_id = f.remote(4)
    result = ray.get(f_obj_id)
    assert result == 16, "FAILURE: something is wrong, result should be 16"


def test_regular_versus_remote_function():
    def regular_function(x):
        result = x * x
        return result

    @ray.remote
    def remote_function(x):
        result = x * x
        return result

    assert regular_function(2) == ray.get(remote_function.remote(2)) == 4


def test_task_dependencies():
    @ray.remote
    def f(x):
        return x

    x1_id = f.remote(1)
    y1_id = f.remote(x1_id)
    assert ray.get(y1_id) == 1
    y2_id = f.remote(x1_id)
    assert ray.get(y2_id) == 1


def test_nested_remote_functions():
    @ray.remote
    def f():
        return 1

    @ray.remote
    def g():
        return [f.remote() for _ in range(4)]

    @ray.remote
    def h():
        return ray.get([f.remote() for _ in range(4)])

    assert ray.get(ray.get(g.remote())) == [1, 1, 1, 1]
    assert ray.get(h.remote()) == [1, 1, 1, 1]


def test_put_once_pass_the_ref():
    @ray.remote
    def f(x):
        return x.shape

    x = np.zeros(1000)
    assert ray.get(f.remote(x)) == (1000,)
    x_id = ray.put(x)
    assert ray.get([f.remote(x_id) for _ in range(10)]) == [(1000,)] * 10


def test_wait_to_process_in_finish_order():
    @ray.remote(num_cpus=0)
    def f(delay):
        time.sleep(delay)
        return time.time()

    start_time = time.time()
    remaining_result_ids = [f.remote(d) for d in (0.5, 0.1, 0.3)]
    results = []
    while len(remaining_result_ids) > 0:
        result_ids, remaining_result_ids = ray.wait(remaining_result_ids, num_returns=1)
        result = ray.get(result_ids[0])
        results.append(result)
        print(f"Processing result which finished after {result - start_time} seconds.")
    assert results == sorted(results)
    assert time.time() - start_time < 5
