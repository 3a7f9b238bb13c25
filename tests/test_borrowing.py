"""Refs inside other values: kept while anything holds them, freed once nothing does.

Each script checks the store's object count: an object that is still referenced somewhere
must be readable, and once no reference remains anywhere its memory must be given back. The
protocol itself (registrations, their order, results that carry refs, the owner's counts) is
driven below without processes, by sequences of calls on in-memory tables.
"""

from __future__ import annotations

import asyncio

import pytest

from aray import _protocol as P
from aray._borrowing import Borrowers
from aray._objects import ObjectTable

PRELUDE = """
        import gc, numpy as np
        aray.init(num_cpus=2)

        def stored():
            gc.collect()
            time.sleep(0.3)  # deletions travel to the node agent
            return aray.object_store_stats()["num_objects"]

        def big(i):
            return np.full(2**17, i, dtype=np.int64)  # 1 MiB: lives in the store
"""


def test_refs_nested_in_a_put_value(run_script):
    r = run_script(PRELUDE + """
        inner = aray.put(big(1))
        outer = aray.put({"x": inner})
        del inner
        assert stored() == 1
        assert int(aray.get(aray.get(outer)["x"])[0]) == 1  # the nested ref keeps it
        del outer
        assert stored() == 0, "the inner object outlived every reference"
        for i in range(50):  # no leak when it happens many times
            outer = aray.put([aray.put(big(i))])
            assert int(aray.get(aray.get(outer)[0])[-1]) == i
            del outer
        assert stored() == 0
        print("OK")
    """)
    assert "OK" in r.stdout


def test_refs_nested_in_task_arguments_and_returns(run_script):
    r = run_script(PRELUDE + """
        @aray.remote
        def echo(refs):
            time.sleep(0.2)
            return refs  # the caller's refs, back inside the result

        @aray.remote
        def make(i):
            return [aray.put(big(i))]  # an object this worker owns, returned inside a list

        inner = aray.put(big(7))
        back = echo.remote([inner])
        del inner  # only the pending task's arguments hold it now
        (again,) = aray.get(back)
        assert int(aray.get(again)[0]) == 7
        del again
        assert stored() == 1  # the result `back` still contains the ref
        del back
        assert stored() == 0

        made = aray.get(make.remote(3))
        time.sleep(0.3)
        assert int(aray.get(made[0])[0]) == 3  # its owner (the worker) kept it for us
        assert stored() == 1
        del made
        assert stored() == 0
        print("OK")
    """)
    assert "OK" in r.stdout


def test_refs_held_by_an_actor(run_script):
    r = run_script(PRELUDE + """
        @aray.remote
        class Keeper:
            def __init__(self):
                self.refs = []
            def keep(self, refs):
                self.refs.extend(refs)
            def total(self):
                return sum(int(aray.get(r)[0]) for r in self.refs)
            def clear(self):
                self.refs = []
                gc.collect()

        keeper = Keeper.remote()
        refs = [aray.put(big(i)) for i in range(3)]
        aray.get(keeper.keep.remote(refs))
        del refs
        assert stored() == 3
        assert aray.get(keeper.total.remote()) == 0 + 1 + 2  # the actor's refs keep them
        aray.get(keeper.clear.remote())
        assert stored() == 0
        print("OK")
    """)
    assert "OK" in r.stdout


def test_a_ref_passed_between_tasks_inside_values(run_script):
    r = run_script(PRELUDE + """
        @aray.remote
        def wrap(refs):
            return {"inside": refs}

        @aray.remote
        def read(d):
            return int(aray.get(d["inside"][0])[0])

        x = aray.put(big(5))
        wrapped = wrap.remote([x])
        del x
        assert aray.get(read.remote(aray.get(wrapped))) == 5
        del wrapped
        assert stored() == 0
        print("OK")
    """)
    assert "OK" in r.stdout


# --- the borrowing protocol without processes ----------------------------------------------
# Each "process" is an object table with its Borrowers; links between them are plain objects
# that queue messages until the test delivers them, so the order of events is the test's.


OID = b"i" * 16
RESULT = b"r" * 16


class FakeLink:
    """One direction of a link: what is sent waits in the receiver's inbox."""

    def __init__(self, sender: Process, receiver: Process) -> None:
        self.sender, self.receiver = sender, receiver

    def send(self, msg) -> None:
        self.receiver.inbox.append((self.sender, msg, None))

    async def request(self, make, timeout):
        reply = asyncio.get_running_loop().create_future()
        self.receiver.inbox.append((self.sender, make(len(self.receiver.inbox) + 1), reply))
        return await reply


class ReplyLink:
    """The receiving side's view of a request's link: its send answers the request."""

    def __init__(self, reply: asyncio.Future | None) -> None:
        self.reply = reply

    def send(self, msg) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(msg)


class Process:
    """A process's object table and borrowing, reachable by its address."""

    def __init__(self, world: dict, address: str) -> None:
        self.address = address
        self.world = world
        world[address] = self
        self.inbox: list = []
        self.deleted: list = []
        loop = asyncio.get_running_loop()
        self.objects = ObjectTable(loop, lambda e: e.data, self._on_unused)
        self.objects.bind_thread()
        self.borrowers = Borrowers(self.objects, address, self._peer,
                                   lambda coro, name="": loop.create_task(coro),
                                   lambda oid, node: self.deleted.append(oid))

    async def _peer(self, address: str) -> FakeLink:
        if address not in self.world:
            raise ConnectionError(f"{address} is gone")
        return FakeLink(self, self.world[address])

    def _on_unused(self, entry) -> None:
        self.borrowers.on_unused(entry)

    def deliver(self) -> list:
        """Handle every message waiting here; returns their class names."""
        inbox, self.inbox = self.inbox, []
        for _sender, msg, reply in inbox:
            getattr(self.borrowers, "_on_" + type(msg).__name__)(ReplyLink(reply), msg)
        return [type(msg).__name__ for _s, msg, _r in inbox]

    def own(self, oid: bytes = OID):
        entry = self.objects.add(oid, owned=True)
        self.objects.refs.incr(oid)  # the owner's own ref
        self.objects.resolve(entry, ["v", b"value"])
        return entry


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_a_borrower_registers_once_and_releases_after_the_answer():
    world: dict = {}
    owner, borrower = Process(world, "owner"), Process(world, "borrower")
    entry = owner.own()
    borrower.objects.refs.incr(OID)  # it unpickled a ref
    borrower.borrowers.borrowed_entry(OID, "owner")
    borrower.borrowers.borrowed_entry(OID, "owner")  # a second unpickling: no new hold
    await settle()
    assert borrower.borrowers.unacked == 1
    assert owner.deliver() == ["AddBorrower"]
    assert entry.holds == 1
    await settle()
    assert borrower.borrowers.unacked == 0
    borrower.objects.refs.decr(OID)  # its last ref goes: the entry, and its hold
    await settle()
    assert OID not in borrower.objects.entries
    assert owner.deliver() == ["RemoveBorrower"]
    assert entry.holds == 0 and OID in owner.objects.entries  # the owner's own ref stays
    owner.objects.refs.decr(OID)
    await settle()
    assert OID not in owner.objects.entries


@pytest.mark.anyio
async def test_a_release_waits_for_every_earlier_registration():
    world: dict = {}
    owner, borrower = Process(world, "owner"), Process(world, "borrower")
    entry = owner.own()
    other = owner.own(b"j" * 16)
    borrower.borrowers.hold_at_owner(OID, "owner")
    borrower.borrowers.hold_at_owner(other.oid, "owner")
    order = []
    borrower.borrowers.after_registrations(lambda: order.append("after"))
    borrower.borrowers.release_at_owner(OID, "owner")  # must not overtake the registrations
    await settle()
    assert [type(m).__name__ for _s, m, _r in owner.inbox] == ["AddBorrower", "AddBorrower"]
    assert order == []
    owner.deliver()
    await settle()
    assert order == ["after"]
    assert owner.deliver() == ["RemoveBorrower"]
    assert entry.holds == 0 and other.holds == 1  # never released before it was counted


@pytest.mark.anyio
async def test_a_result_carrying_refs_moves_the_hold_to_the_caller():
    world: dict = {}
    owner, worker, caller = (Process(world, a) for a in ("owner", "worker", "caller"))
    entry = owner.own()
    result = caller.objects.add(RESULT, owned=True)  # the task's return, owned by the caller
    caller.objects.refs.incr(RESULT)
    # the worker registers its caller as a holder before it reports
    worker.borrowers.hold_at_owner(OID, "owner")
    reported = []
    worker.borrowers.after_registrations(lambda: reported.append(True))
    await settle()
    assert reported == []
    owner.deliver()
    await settle()
    assert reported == [True] and entry.holds == 1
    # the caller gets the result: it registers itself, then drops the worker's hold
    caller.borrowers.accept_value(RESULT, ["v", b"data", [[OID, "owner"]]])
    assert result.held_refs and result.held_refs[0]._id == OID
    await settle()
    assert owner.deliver() == ["AddBorrower"]
    assert entry.holds == 2
    await settle()
    assert owner.deliver() == ["RemoveBorrower"]
    assert entry.holds == 1  # the caller's own hold, while the result lives
    caller.objects.refs.decr(RESULT)
    await settle()
    assert RESULT not in caller.objects.entries and result.held_refs is None


@pytest.mark.anyio
async def test_a_result_nobody_waits_for_is_deleted_from_the_store():
    world: dict = {}
    caller = Process(world, "caller")
    caller.borrowers.accept_value(RESULT, ["s", "node-a", 1024, 0])
    assert caller.deleted == [RESULT]


@pytest.mark.anyio
async def test_the_owner_counts_only_objects_it_still_has():
    world: dict = {}
    owner = Process(world, "owner")
    replies = []
    link = ReplyLink(None)
    link.send = replies.append
    owner.borrowers._on_AddBorrower(link, P.AddBorrower(1, OID))  # freed already
    assert [type(r).__name__ for r in replies] == ["BorrowerAdded"]  # answered all the same
    owner.borrowers._on_RemoveBorrower(link, P.RemoveBorrower(OID))  # nothing to release
    entry = owner.own()
    owner.borrowers._on_RemoveBorrower(link, P.RemoveBorrower(OID))  # never counted here
    assert entry.holds == 0
    owner.borrowers.hold_at_owner(OID, "owner")  # a hold of its own: no message
    assert entry.holds == 1 and owner.inbox == []
    owner.borrowers.release_at_owner(OID, "owner")
    assert entry.holds == 0


@pytest.mark.anyio
async def test_an_owner_that_is_gone_does_not_hold_up_the_rest():
    world: dict = {}
    borrower = Process(world, "borrower")
    borrower.borrowers.hold_at_owner(OID, "nobody")
    sent = []
    borrower.borrowers.after_registrations(lambda: sent.append("result"))
    await settle()
    assert borrower.borrowers.unacked == 0 and sent == ["result"]
