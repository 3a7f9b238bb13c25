"""The node agent's resource accounting is plain code: tested without processes."""

import pytest

from aray.node.scheduler import (
    LeaseQueue,
    ReleaseError,
    ResourcePool,
    feasible_anywhere,
    fits,
    format_resources,
)


def test_fits_and_feasible():
    assert fits({"CPU": 1}, {"CPU": 2})
    assert not fits({"CPU": 1, "X": 2}, {"CPU": 2, "X": 1})
    assert fits({}, {})
    assert feasible_anywhere({"X": 2}, [{"X": 1}, {"X": 3}])
    assert not feasible_anywhere({"X": 2}, [{"X": 1}, {"CPU": 8}])


def test_fractional_resources_add_up_exactly():
    pool = ResourcePool({"CPU": 1})
    for _ in range(10):
        assert pool.fits({"CPU": 0.1})
        pool.acquire({"CPU": 0.1})
    assert not pool.fits({"CPU": 0.1})
    for _ in range(10):
        pool.release({"CPU": 0.1}, [])
    assert pool.available["CPU"] == 1.0


def test_gpu_ids_are_assigned_and_returned():
    pool = ResourcePool({"CPU": 4, "GPU": 2})
    a = pool.acquire({"GPU": 1})
    b = pool.acquire({"GPU": 1})
    assert sorted(a + b) == [0, 1]
    assert not pool.fits({"GPU": 1})
    pool.release({"GPU": 1}, a)
    assert pool.acquire({"GPU": 1}) == a


def test_lending_cpus_of_a_blocked_worker():
    pool = ResourcePool({"CPU": 1})
    pool.acquire({"CPU": 1})
    assert not pool.fits({"CPU": 1})
    pool.lend(1)
    assert pool.fits({"CPU": 1})
    pool.acquire({"CPU": 1})
    pool.reclaim(1)  # oversubscribed until one of them finishes
    assert pool.available["CPU"] == -1


def test_lease_queue_lets_small_requests_pass_a_big_one():
    pool = ResourcePool({"CPU": 2})
    q = LeaseQueue()
    q.push(("big", {"CPU": 4}))
    q.push(("small", {"CPU": 1}))
    granted = q.take_grantable(lambda item: [pool], lambda item: item[1])
    assert [item[0] for item, _, _ in granted] == ["small"]
    assert [item[0] for item in q] == ["big"]


def test_format_resources_hides_node_keys():
    assert format_resources({"CPU": 1, "node:1.2.3.4": 1}) == "{CPU: 1.0}"


def test_releasing_twice_raises():
    pool = ResourcePool({"CPU": 2})
    pool.acquire({"CPU": 1})
    pool.release({"CPU": 1}, [])
    with pytest.raises(ReleaseError, match="released twice"):
        pool.release({"CPU": 1}, [])
    assert pool.available["CPU"] == 2  # the refused release changed nothing


def test_releasing_a_gpu_twice_raises():
    pool = ResourcePool({"CPU": 4, "GPU": 2})
    ids = pool.acquire({"GPU": 1})
    pool.acquire({"GPU": 1})
    pool.release({"GPU": 1}, ids)
    with pytest.raises(ReleaseError):
        pool.release({"GPU": 1}, ids)
    half = ResourcePool({"GPU": 1})
    ids = half.acquire({"GPU": 0.5})
    half.release({"GPU": 0.5}, ids)
    with pytest.raises(ReleaseError):
        half.release({"GPU": 0.5}, ids)


def test_a_fraction_then_a_whole_gpu_use_two_devices():
    pool = ResourcePool({"CPU": 4, "GPU": 2})
    assert pool.acquire({"GPU": 0.5}) == [0]
    assert pool.fits({"GPU": 1})
    assert pool.acquire({"GPU": 1}) == [1]  # not the device the fraction uses
    assert not pool.fits({"GPU": 1})  # 0.5 is free, but on no whole device
    assert pool.fits({"GPU": 0.5})


def test_fractional_gpus_pack_onto_one_device_before_the_next():
    pool = ResourcePool({"GPU": 2})
    assert [pool.acquire({"GPU": 0.25}) for _ in range(4)] == [[0]] * 4
    assert pool.acquire({"GPU": 0.5}) == [1]
    assert pool.acquire({"GPU": 0.25}) == [1]  # the fuller device that has room
    assert not pool.fits({"GPU": 0.5}) and not pool.fits({"GPU": 1})


def test_whole_gpu_requests_never_share_a_device():
    pool = ResourcePool({"GPU": 2})
    a = pool.acquire({"GPU": 1})
    assert pool.acquire({"GPU": 0.5}) != a
    assert not pool.fits({"GPU": 1})
    pool.release({"GPU": 1}, a)
    assert pool.acquire({"GPU": 0.5}) != a  # the fraction packs onto the used device
    assert pool.acquire({"GPU": 1}) == a  # so a whole one is free again


def test_gpu_ids_come_back_with_their_lease():
    pool = ResourcePool({"GPU": 2})
    half = pool.acquire({"GPU": 0.5})
    whole = pool.acquire({"GPU": 1})
    pool.release({"GPU": 0.5}, half)
    assert pool.free_gpus == half
    assert pool.acquire({"GPU": 1}) == half
    pool.release({"GPU": 1}, whole)
    assert pool.free_gpus == whole
