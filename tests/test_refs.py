"""ObjectRefs, get/wait/put, as_completed, and asyncio interop (from a loop that is not
aray's own: the cluster fixture runs aray on its private loop thread)."""

import asyncio
import concurrent.futures
import pickle
import time

import pytest

import aray
from aray.exceptions import GetTimeoutError

pytestmark = pytest.mark.usefixtures("cluster")


@aray.remote(num_cpus=0)  # runs at once even while earlier tests' sleepers hold the CPUs
def sleep_then(t, value=None):
    time.sleep(t)
    return t if value is None else value


@aray.remote
def fail(msg):
    raise RuntimeError(msg)


def test_refs_are_hashable_printable_picklable():
    ref = aray.put(1)
    assert ref == pickle.loads(pickle.dumps(ref))
    assert hash(ref) == hash(pickle.loads(pickle.dumps(ref)))
    assert repr(ref) == f"ObjectRef({ref.hex()})"
    assert len({ref, aray.put(1), ref}) == 2


def test_get_validates_its_input():
    with pytest.raises(TypeError, match=r"expects an ObjectRef or a list of ObjectRefs, got a int"):
        aray.get(3)
    with pytest.raises(TypeError, match="item 1 of the list is a str"):
        aray.get([aray.put(1), "x"])
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        aray.get(aray.put(1), timeout=-1)


def test_get_keeps_order_and_times_out():
    refs = [sleep_then.remote(0.2, "slow"), sleep_then.remote(0.0, "fast")]
    assert aray.get(refs) == ["slow", "fast"]
    with pytest.raises(GetTimeoutError) as info:
        aray.get(sleep_then.remote(2), timeout=0.1)
    assert isinstance(info.value, TimeoutError)


def test_get_of_a_list_raises_a_failure_without_waiting_for_the_rest():
    slow = sleep_then.remote(60)
    # (before: the get waited for the sleeper and timed out)
    with pytest.raises(RuntimeError, match="broken"):
        aray.get([slow, fail.remote("broken")], timeout=30)

    async def main():
        return await aray.aio.get([slow, fail.remote("broken too")], timeout=30)

    with pytest.raises(RuntimeError, match="broken too"):
        asyncio.run(main())
    aray.cancel(slow, force=True)


def test_wait_semantics():
    fast, slow = sleep_then.remote(0.0), sleep_then.remote(1.5)
    ready, not_ready = aray.wait([slow, fast], num_returns=1, timeout=5)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = aray.wait([slow, fast], num_returns=2, timeout=0.01)
    assert ready == [fast] and not_ready == [slow]  # timeout: whatever is ready
    a, b, c = aray.put(1), aray.put(2), aray.put(3)
    ready, not_ready = aray.wait([c, a, b], num_returns=2)
    assert ready == [c, a] and not_ready == [b]  # input order kept, at most num_returns
    assert aray.wait([]) == ([], [])
    with pytest.raises(ValueError, match="unique"):
        aray.wait([a, a])
    with pytest.raises(ValueError, match="cannot be greater"):
        aray.wait([a], num_returns=2)
    with pytest.raises(TypeError, match="list of ObjectRefs"):
        aray.wait(a)


def test_put_and_errors_from_put():
    assert aray.get(aray.put({"x": [1, 2]})) == {"x": [1, 2]}
    import threading

    with pytest.raises(TypeError, match="lock"):
        aray.put(threading.Lock())
    with pytest.raises(TypeError, match="ObjectRef"):
        aray.put(aray.put(1))


def test_future_returns_a_concurrent_future():
    fut = sleep_then.remote(0.05, 42).future()
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=10) == 42
    with pytest.raises(RuntimeError, match="nope"):
        fail.remote("nope").future().result(timeout=10)


def test_as_future_gives_an_asyncio_future_of_the_running_loop():
    async def main():
        fut = sleep_then.remote(0.05, 42).as_future()
        assert isinstance(fut, asyncio.Future) and fut.get_loop() is asyncio.get_running_loop()
        assert await fut == 42
        with pytest.raises(RuntimeError, match="nope"):
            await fail.remote("nope").as_future()

    asyncio.run(main())


def test_as_completed_in_finish_order():
    refs = [sleep_then.remote(t) for t in (0.6, 0.0, 0.3)]
    assert [aray.get(r) for r in aray.as_completed(refs)] == [0.0, 0.3, 0.6]
    with pytest.raises(GetTimeoutError):
        list(aray.as_completed([sleep_then.remote(2)], timeout=0.1))


def test_as_completed_is_fast_with_ten_thousand_refs():
    refs = [aray.put(i) for i in range(10_000)]
    start = time.monotonic()
    assert len(list(aray.as_completed(refs))) == 10_000
    assert time.monotonic() - start < 20  # generous bound: O(n), not O(n^2)


@pytest.mark.anyio
async def test_await_and_gather_from_another_loop():
    assert await sleep_then.remote(0, 5) == 5
    assert await asyncio.gather(*[sleep_then.remote(0, i) for i in range(3)]) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="boom"):
        await fail.remote("boom")
    results = await asyncio.gather(fail.remote("x"), sleep_then.remote(0, 1),
                                   return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and results[1] == 1


@pytest.mark.anyio
async def test_asyncio_wait_wait_for_and_shield_accept_refs():
    fast, slow = sleep_then.remote(0.0, "fast"), sleep_then.remote(1.0, "slow")
    done, pending = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
    assert done == {fast} and pending == {slow}
    assert next(iter(done)).result() == "fast"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(slow, 0.05)
    # timing out the wait did not cancel the task: the ref still resolves
    assert await asyncio.wait_for(slow, 10) == "slow"
    assert await asyncio.shield(sleep_then.remote(0, 7)) == 7


@pytest.mark.anyio
async def test_aio_get_wait_put_and_async_as_completed():
    ref = await aray.aio.put([1, 2])
    assert await aray.aio.get(ref) == [1, 2]
    assert await aray.aio.get([ref, ref]) == [[1, 2], [1, 2]]
    ready, rest = await aray.aio.wait([sleep_then.remote(1.0), ref], timeout=5)
    assert ready == [ref] and len(rest) == 1
    order = [await r async for r in aray.as_completed(
        [sleep_then.remote(0.4), sleep_then.remote(0.0), sleep_then.remote(0.2)])]
    assert order == [0.0, 0.2, 0.4]
    with pytest.raises(GetTimeoutError):
        await aray.aio.get(sleep_then.remote(2), timeout=0.05)


def test_refs_work_after_their_task_and_values_are_fresh_copies():
    ref = aray.put([1])
    a = aray.get(ref)
    a.append(2)
    assert aray.get(ref) == [1]
