"""aray.util.queue.Queue, Ray's queue on an async actor, shared by the driver, tasks and
actors of the shared 2-CPU cluster."""

import asyncio
import queue
import time

import pytest
from conftest import wait_gone, wait_until

import aray
from aray.util.queue import Empty, Full, Queue

pytestmark = [pytest.mark.usefixtures("cluster"), pytest.mark.timeout(120)]


@aray.remote
def produce(q, items):
    for item in items:
        q.put(item)
    return len(items)


@aray.remote
def consume(q, n, timeout):
    return [q.get(timeout=timeout) for _ in range(n)]


@aray.remote
class Consumer:
    async def take(self, q, n):
        return [await q.get_async(timeout=30) for _ in range(n)]

    def take_sync(self, q):
        try:
            return q.get(timeout=0.2)
        except Empty:
            return "empty"


def test_items_come_out_first_in_first_out_with_sizes():
    q = Queue()
    assert q.empty() and q.qsize() == 0 and not q.full()
    for item in ["a", {"b": 1}, 3]:
        q.put(item)
    assert (q.size(), q.qsize(), len(q), q.empty()) == (3, 3, 3, False)
    assert [q.get(), q.get_nowait(), q.get(block=False)] == ["a", {"b": 1}, 3]
    assert q.empty()
    q.shutdown()


def test_empty_and_full_raise_at_once_without_blocking():
    q = Queue(maxsize=2)
    q.put(1)
    q.put_nowait(2)
    assert q.full()
    with pytest.raises(Full) as full:
        q.put_nowait(3)
    assert isinstance(full.value, queue.Full)
    with pytest.raises(Full):
        q.put(3, block=False)
    assert [q.get_nowait(), q.get_nowait()] == [1, 2]
    with pytest.raises(Empty) as empty:
        q.get_nowait()
    assert isinstance(empty.value, queue.Empty)
    q.shutdown()


def test_blocking_calls_give_up_after_their_timeout():
    q = Queue(maxsize=1)
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    waited = time.monotonic() - start
    assert 0.25 < waited < 5, waited
    q.put("x")
    start = time.monotonic()
    with pytest.raises(Full):
        q.put("y", timeout=0.3)
    waited = time.monotonic() - start
    assert 0.25 < waited < 5, waited
    assert q.get(timeout=0) == "x"  # the timed-out put left nothing behind
    assert q.empty()
    for call in (lambda: q.get(timeout=-1), lambda: q.put(1, timeout=-1)):
        with pytest.raises(ValueError, match="non-negative"):
            call()
    q.shutdown()


def test_a_timeout_holds_even_when_the_actor_cannot_answer(monkeypatch):
    import aray.util.queue as queue_module

    monkeypatch.setattr(queue_module, "_ANSWER_GRACE_S", 0.5)
    # no node has this resource: the queue's actor is never placed, and never answers
    q = Queue(actor_options={"resources": {"NoNodeHasThis": 1}})
    for call, error in ((lambda: q.get(timeout=0.1), Empty),
                        (lambda: q.put("x", timeout=0.1), Full),
                        (lambda: q.get_nowait(), Empty),
                        (lambda: asyncio.run(q.get_async(timeout=0.1)), Empty)):
        start = time.monotonic()
        with pytest.raises(error):
            call()
        assert time.monotonic() - start < 5
    q.shutdown(force=True)


def test_a_blocked_get_in_a_task_wakes_up_when_the_driver_puts():
    q = Queue()
    waiting = consume.remote(q, 2, 30)
    ready, _ = aray.wait([waiting], timeout=0.3)
    assert ready == []  # it waits for items
    q.put("first")
    q.put("second")
    assert aray.get(waiting, timeout=30) == ["first", "second"]
    q.shutdown()


def test_a_blocked_put_waits_for_room():
    q = Queue(maxsize=1)
    q.put(0)
    putting = produce.remote(q, [1, 2])
    ready, _ = aray.wait([putting], timeout=0.3)
    assert ready == []  # the queue is full: the task waits
    assert [q.get(timeout=30) for _ in range(3)] == [0, 1, 2]
    assert aray.get(putting, timeout=30) == 2
    q.shutdown()


def test_the_queue_pickles_into_tasks_and_actors():
    q = Queue()
    assert aray.get(produce.remote(q, list(range(5)))) == 5
    consumer = Consumer.remote()
    assert aray.get(consumer.take.remote(q, 3)) == [0, 1, 2]
    assert aray.get(consume.remote(q, 2, 10)) == [3, 4]
    assert aray.get(consumer.take_sync.remote(q)) == "empty"
    aray.kill(consumer)
    q.shutdown()


def test_batches_are_all_or_nothing():
    q = Queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full, match="Cannot add 2 items"):
        q.put_nowait_batch([3, 4])
    assert q.qsize() == 2  # none of the batch went in
    q.put_nowait_batch(iter([3]))
    with pytest.raises(Empty, match="Cannot get 4 items"):
        q.get_nowait_batch(4)
    assert q.qsize() == 3  # none came out
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)
    q.shutdown()


def test_async_put_and_get_wait_without_blocking_the_loop():
    q = Queue(maxsize=1)

    async def main():
        getter = asyncio.ensure_future(q.get_async(timeout=30))
        ticks = 0
        while ticks < 5:  # the loop runs while the get waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not getter.done()
        await q.put_async("hello")
        got = await getter
        await q.put_async("full")
        with pytest.raises(Full):
            await q.put_async("more", block=False)
        with pytest.raises(Full):
            await q.put_async("more", timeout=0.1)
        taken = await q.get_async(block=False)
        with pytest.raises(Empty):
            await q.get_async(timeout=0.1)
        return got, taken

    assert asyncio.run(main()) == ("hello", "full")
    q.shutdown()


def test_actor_options_reach_the_queues_actor():
    q = Queue(actor_options={"name": "work-queue", "resources": {"Custom": 1}})
    same = aray.get_actor("work-queue")
    aray.get(same.put.remote("via the actor", None))
    assert q.get(timeout=10) == "via the actor"
    q.shutdown()


@pytest.mark.parametrize("force", [False, True])
def test_shutdown_ends_the_actor(force):
    from aray.util.state import list_actors

    name = f"queue-shutdown-{force}"
    q = Queue(actor_options={"name": name})
    q.put(1)
    rows = wait_until(lambda: [r for r in list_actors(filters=[("name", "=", name)])
                               if r["state"] == "ALIVE" and r["pid"]], 30,
                      message="the queue's actor to be listed with its pid")
    q.shutdown(force=force, grace_period_s=5)
    assert wait_gone([rows[0]["pid"]]) == [], "the queue's actor outlived shutdown()"
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(2)
    q.shutdown()  # a second time does nothing
