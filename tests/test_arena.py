"""The arena: region allocation, pins that keep readers' views valid, reuse, crash safety."""

import gc

import numpy as np
import pytest

from aray.store import arena
from aray.store._serialize import deserialize, serialize
from aray.store.arena import PAGE, Allocator, ArenaClient, ArenaSpace

pytestmark = pytest.mark.skipif(not arena.supported(), reason="needs OFD locks (Linux)")


def test_allocator_is_best_fit_page_aligned_and_coalesces():
    alloc = Allocator(10 * PAGE)
    a = alloc.allocate(1)
    b = alloc.allocate(PAGE + 1)  # two pages
    c = alloc.allocate(3 * PAGE)
    assert (a, b, c) == (0, PAGE, 3 * PAGE) and alloc.in_use == 6 * PAGE
    assert alloc.allocate(5 * PAGE) is None  # only 4 pages left at the end
    alloc.free(b, 2 * PAGE)
    assert alloc.allocate(PAGE) == PAGE  # the smallest hole that fits: the one left by b
    alloc.free(PAGE, PAGE)
    alloc.free(a, 1)
    alloc.free(c, 3 * PAGE)
    # every neighbour merged back: one region as large as the arena
    assert alloc.in_use == 0 and alloc.largest_free() == 10 * PAGE
    assert alloc.allocate(10 * PAGE) == 0


def test_allocator_takes_the_smallest_hole_that_fits():
    alloc = Allocator(20 * PAGE)
    regions = [alloc.allocate(PAGE * n) for n in (3, 1, 1, 1, 2)]
    assert regions == [0, 3 * PAGE, 4 * PAGE, 5 * PAGE, 6 * PAGE]
    alloc.free(0, 3 * PAGE)  # a 3-page hole first, then a 1-page one
    alloc.free(4 * PAGE, PAGE)
    assert alloc.allocate(PAGE) == 4 * PAGE  # not the first hole: the one that fits best
    assert alloc.allocate(2 * PAGE) == 0  # then the 3-page hole, before the untouched end
    assert alloc.allocate(13 * PAGE) is None and alloc.largest_free() == 12 * PAGE


def test_allocator_agrees_with_a_page_map_under_random_churn():
    import random

    rng = random.Random(7)
    pages = 200
    alloc = Allocator(pages * PAGE)
    used = [False] * pages  # the model: which pages are taken
    live: dict[int, int] = {}
    for _ in range(3000):
        if live and rng.random() < 0.45:
            offset, n = live.popitem() if rng.random() < 0.5 else rng.choice(list(live.items()))
            live.pop(offset, None)
            alloc.free(offset, n * PAGE)
            used[offset // PAGE:offset // PAGE + n] = [False] * n
        else:
            n = rng.randrange(1, 9)
            offset = alloc.allocate(n * PAGE - rng.randrange(PAGE))  # rounded up to n pages
            runs = [i for i in range(pages - n + 1) if not any(used[i:i + n])]
            if offset is None:
                assert not runs, "a free run of pages was there"
                continue
            first = offset // PAGE
            assert offset % PAGE == 0 and not any(used[first:first + n])
            used[first:first + n] = [True] * n
            live[offset] = n
        assert alloc.in_use == sum(used) * PAGE
        free_runs = [len(run) for run in "".join(".#"[u] for u in used).split("#") if run]
        assert alloc.largest_free() == max(free_runs, default=0) * PAGE  # holes coalesced


def _space(tmp_path, size=64 * PAGE):
    path = str(tmp_path / "arena")
    return ArenaSpace(path, size), ArenaClient(path)


def test_a_pinned_region_is_not_reused_until_the_reader_lets_go(tmp_path):
    space, client = _space(tmp_path)
    value = np.arange(10_000, dtype=np.int64)
    ser = serialize(value)
    offset = space.allocate(ser.total_size)
    client.write(offset, b"obj-1", ser)
    held = deserialize(client.read(offset, b"obj-1", ser.total_size))
    assert not held.flags.writeable and not held.flags.owndata
    space.release(offset, ser.total_size)  # deleted while a reader holds a view
    assert space.parked_bytes > 0
    # the freed object can no longer be read, and its region is not handed out again
    with pytest.raises(FileNotFoundError):
        client.read(offset, b"obj-1", ser.total_size)
    other = serialize(np.full(10_000, -1, dtype=np.int64))
    second = space.allocate(other.total_size)
    assert second != offset
    client.write(second, b"obj-2", other)
    assert int(held.sum()) == int(value.sum())
    del held
    gc.collect()
    space.sweep()  # the view is gone: the region is free again
    assert space.parked_bytes == 0 and space.allocate(ser.total_size) == offset
    space.close()


def test_reading_a_region_that_holds_another_object_fails_cleanly(tmp_path):
    space, client = _space(tmp_path)
    ser = serialize(b"x" * 100_000)
    offset = space.allocate(ser.total_size)
    client.write(offset, b"first", ser)
    with pytest.raises(FileNotFoundError):
        client.read(offset, b"second", ser.total_size)
    assert deserialize(client.read(offset, b"first", ser.total_size)) == b"x" * 100_000
    space.close()


def test_puts_reuse_arena_pages_and_views_outlive_their_refs(run_script):
    r = run_script("""
        import gc
        import numpy as np
        aray.init(num_cpus=1, object_store_memory=100 * 2**20)
        keep = aray.get(aray.put(np.full(4 * 2**20, 7, dtype=np.uint8)))  # ref dropped at once
        gc.collect()
        from aray import _global
        # 40 x 32 MiB through a 100 MiB arena: regions are freed and reused, nothing spills
        for i in range(40):
            ref = aray.put(np.full(32 * 2**20, i, dtype=np.uint8))
            assert int(aray.get(ref)[-1]) == i
            assert _global.core().ownership.entry_for(ref).location[2] >= 0, "not in the arena"
            del ref
        wait_until(lambda: aray.object_store_stats()["num_objects"] == 0, 10,
                   message="the dropped objects to be freed")
        stats = aray.object_store_stats()
        print("STATS", stats)
        assert stats["num_spilled"] == 0 and stats["num_objects"] == 0, stats
        # the view read before is intact: its region was never handed out again
        assert keep.min() == 7 and keep.max() == 7 and not keep.flags.writeable
        store = _global.core().store.path
        print("FILES", sorted(os.listdir(store)))
        del keep
        report_pids()
        aray.shutdown()
        print("OK")
    """, timeout=120)
    assert "OK" in r.stdout and "FILES ['.node.pid', 'arena']" in r.stdout
    r.assert_no_leftovers()


def test_a_region_given_to_a_writer_that_dies_is_freed(run_script):
    r = run_script("""
        aray.init(num_cpus=1, object_store_memory=64 * 2**20)
        @aray.remote
        def die_while_writing():
            from aray import _global
            core = _global.core()
            offset = core.ownership._arena_region(b"z" * 24, 48 * 2**20)  # granted, never sealed
            print("GRANTED", offset >= 0, flush=True)
            os._exit(1)
        try:
            aray.get(die_while_writing.options(max_retries=0).remote())
        except aray.exceptions.WorkerCrashedError:
            pass
        wait_until(lambda: aray.object_store_stats()["arena_in_use_bytes"] == 0, 10,
                   message="the dead writer's region to be freed")
        stats = aray.object_store_stats()
        print("IN-USE", stats["arena_in_use_bytes"])
        import numpy as np
        ref = aray.put(np.ones(48 * 2**20, dtype=np.uint8))  # needs the region back
        from aray import _global
        aray.wait([ref])
        print("IN-ARENA", _global.core().ownership.entry_for(ref).location[2] >= 0)
        aray.shutdown()
    """, timeout=60)
    assert "GRANTED True" in r.stdout and "IN-USE 0" in r.stdout and "IN-ARENA True" in r.stdout


def test_arena_objects_spill_and_come_back(run_script):
    r = run_script("""
        import numpy as np
        aray.init(num_cpus=1, object_store_memory=40 * 2**20)
        refs = [aray.put(np.full(2**20, i, dtype=np.int64)) for i in range(8)]  # 8 x 8 MiB
        wait_until(lambda: aray.object_store_stats()["num_spilled"] >= 3, 10,
                   message="older objects to spill")
        stats = aray.object_store_stats()
        print("STATS", stats)
        assert stats["num_spilled"] >= 3, stats
        @aray.remote
        def last(a):
            return int(a[-1])
        assert aray.get([last.remote(r) for r in refs]) == list(range(8))
        del refs
        wait_until(lambda: aray.object_store_stats()["num_objects"] == 0
                   and aray.object_store_stats()["arena_in_use_bytes"] == 0, 10,
                   message="the dropped objects and their regions to be freed")
        stats = aray.object_store_stats()
        assert stats["num_objects"] == 0 and stats["arena_in_use_bytes"] == 0, stats
        aray.shutdown()
        print("OK")
    """, timeout=60)
    assert "OK" in r.stdout
