"""Cancelling sync code: a cancel reaches the call it names, never the worker or a later call.

A cancel of a sync task or method raises an exception inside the thread that runs it. The
tests here cancel thousands of short calls at random moments, many of them just as the call
ends, and check that every call that was not cancelled returns its own value, that the
cancelled ones either finished or raise TaskCancelledError, and that the workers and actors
go on serving afterwards (a thread killed by a stray cancel would hang them with their
lease held).
"""

from __future__ import annotations

import threading

from aray._thread_cancel import ThreadCancelled, ThreadCancels

HAMMER = """
import random, threading
from aray.exceptions import TaskCancelledError

aray.init(num_cpus=2)
random.seed(14)

def spin(n):
    for _ in range(n):
        pass

@aray.remote(max_retries=0)
def short(i, n):
    spin(n)
    return i

@aray.remote
class Actor:
    def short(self, i, n):
        spin(n)
        return i

def hammer(call, total):
    # submit short calls, a few at a time, while another thread cancels the latest ones
    # again and again: some are queued, some running, many just ending
    refs, chosen = [], set()
    stop = threading.Event()

    def canceller():
        while not stop.is_set():
            if refs:
                k = random.randrange(max(0, len(refs) - 4), len(refs))
                chosen.add(k)
                aray.cancel(refs[k][1])
            time.sleep(random.random() * 0.0005)

    other = threading.Thread(target=canceller)
    other.start()
    try:
        for start in range(0, total, 4):
            batch = [call(i, random.randrange(0, 20000)) for i in range(start, start + 4)]
            refs.extend(zip(range(start, start + 4), batch))
            aray.wait(batch, num_returns=len(batch), timeout=60)
    finally:
        stop.set()
        other.join()
    outcomes = {"finished": 0, "cancelled": 0}
    for k, (i, ref) in enumerate(refs):
        if k not in chosen:  # nothing that was not cancelled may be cancelled
            assert aray.get(ref, timeout=60) == i
            continue
        try:
            assert aray.get(ref, timeout=60) == i
            outcomes["finished"] += 1
        except TaskCancelledError:
            outcomes["cancelled"] += 1
    return outcomes

tasks = hammer(lambda i, n: short.remote(i, n), 2000)
plain = Actor.remote()
calls = hammer(lambda i, n: plain.short.remote(i, n), 2000)
threaded = Actor.options(max_concurrency=3).remote()
threaded_calls = hammer(lambda i, n: threaded.short.remote(i, n), 2000)
print("OUTCOMES", tasks, calls, threaded_calls)
for outcome in (tasks, calls, threaded_calls):
    assert outcome["cancelled"] > 0, outcome
# everything still serves: both task workers (no lease stuck) and both actors
assert sorted(aray.get([short.remote(i, 0) for i in range(200)], timeout=60)) == list(range(200))
assert aray.get([plain.short.remote(i, 0) for i in range(50)], timeout=60) == list(range(50))
assert aray.get([threaded.short.remote(i, 0) for i in range(50)], timeout=60) == list(range(50))
report_pids()
aray.shutdown()
print("OK")
"""


def test_cancels_at_random_moments_hit_only_their_calls(run_script):
    r = run_script(HAMMER, timeout=300)
    assert "OK" in r.stdout, r.stdout + r.stderr
    r.assert_no_leftovers()


def test_a_cancel_as_the_call_ends_is_absorbed_or_raised_in_it():
    cancels = ThreadCancels()
    for i in range(300):
        ending = threading.Event()
        outcome = []

        def call(ending=ending):
            ending.set()  # the canceller goes now, as this returns
            return "value"

        tid = i.to_bytes(4, "big")

        def thread(tid=tid, outcome=outcome, call=call):
            try:
                outcome.append(cancels.run(tid, call))
            except ThreadCancelled:
                outcome.append("cancelled")
            outcome.append(cancels.run(b"next" + tid, lambda: "next"))

        worker = threading.Thread(target=thread)
        worker.start()
        assert ending.wait(10)
        cancels.cancel(tid)
        worker.join(10)
        assert outcome in (["value", "next"], ["cancelled", "next"])


def test_a_cancel_inside_the_call_raises_there():
    cancels = ThreadCancels()
    started = threading.Event()
    outcome = []

    def call():
        started.set()
        while True:  # pure Python: the cancel lands at the next bytecode
            pass

    def thread():
        try:
            cancels.run(b"t", call)
        except ThreadCancelled:
            outcome.append("cancelled")
        outcome.append(cancels.run(b"u", lambda: "next"))

    worker = threading.Thread(target=thread)
    worker.start()
    assert started.wait(10)
    assert cancels.cancel(b"t")
    worker.join(10)
    assert outcome == ["cancelled", "next"]
    assert not cancels.cancel(b"t")  # over: nothing left to cancel


def test_many_cancels_race_calls_that_end():
    """Cancel each of many short calls from another thread at about the moment it ends:
    each call either returns or raises ThreadCancelled in its own run, never in the next."""
    cancels = ThreadCancels()
    current: list[bytes] = []
    results: dict[int, str] = {}
    stop = threading.Event()

    def canceller():
        while not stop.is_set():
            if current:
                cancels.cancel(current[-1])

    def runner():
        for i in range(20_000):
            tid = i.to_bytes(4, "big")
            current.append(tid)
            try:
                results[i] = cancels.run(tid, lambda i=i: i % 7 and "ok")
            except ThreadCancelled:
                results[i] = "cancelled"

    other = threading.Thread(target=canceller)
    other.start()
    try:
        run = threading.Thread(target=runner)
        run.start()
        run.join(120)
        assert not run.is_alive()
    finally:
        stop.set()
        other.join(10)
    assert len(results) == 20_000  # the thread survived every cancel
    assert set(results.values()) <= {"ok", 0, "cancelled"}


def test_an_actor_call_is_marked_not_interrupted():
    """ThreadCancels(interrupt=False), an actor's: a cancel marks the running call, which
    runs on and sees the mark; the call then raises ThreadCancelled, the next one runs."""
    cancels = ThreadCancels(interrupt=False)
    started, cancelled = threading.Event(), threading.Event()
    seen = []

    def call():
        started.set()
        assert cancelled.wait(10)  # (an interrupt would land in this wait)
        seen.append(cancels.requested(b"t"))
        return "returned early"

    def thread():
        try:
            cancels.run(b"t", call)
        except ThreadCancelled:
            seen.append("cancelled")
        seen.append(cancels.run(b"u", lambda: cancels.requested(b"u")))

    worker = threading.Thread(target=thread)
    worker.start()
    assert started.wait(10)
    assert cancels.cancel(b"t")
    cancelled.set()
    worker.join(10)
    assert seen == [True, "cancelled", False]
    assert not cancels.requested(b"t")  # over: the mark went with it
