"""The object store: stats, capacity and spilling, freeing, crash safety, cleanup."""

import numpy as np


def test_stats_spilling_and_full_errors(run_script):
    r = run_script("""
        import numpy as np
        aray.init(num_cpus=2, object_store_memory=50 * 2**20)
        stats = aray.object_store_stats()
        assert stats["capacity_bytes"] == 50 * 2**20 and stats["num_objects"] == 0, stats
        # hold 100 MB in a 50 MB store: older objects spill to disk and stay readable
        refs = [aray.put(np.full(10 * 2**20 // 8, i, dtype=np.int64)) for i in range(10)]

        def spilled():
            s = aray.object_store_stats()
            return (s["used_bytes"] <= 50 * 2**20 + 11 * 2**20 and s["num_spilled"] >= 4
                    and s["spilled_bytes"] >= 40 * 2**20)

        wait_until(spilled, 10, message="older objects to spill to disk")
        stats = aray.object_store_stats()
        print("STATS", stats)
        assert stats["num_objects"] == 10
        assert stats["used_bytes"] <= 50 * 2**20 + 11 * 2**20, stats
        assert stats["num_spilled"] >= 4 and stats["spilled_bytes"] >= 40 * 2**20, stats
        @aray.remote
        def first(a):
            return int(a[0])
        assert aray.get([first.remote(r) for r in refs]) == list(range(10))
        assert [int(aray.get(r)[-1]) for r in refs] == list(range(10))
        # one object bigger than the whole store: a clear error, nothing else lost
        try:
            aray.put(np.zeros(60 * 2**20 // 8))
        except aray.exceptions.ObjectStoreFullError as e:
            print("FULL", e)
        @aray.remote
        def too_big():
            return np.zeros(60 * 2**20 // 8)
        try:
            aray.get(too_big.remote())
        except aray.exceptions.ObjectStoreFullError as e:
            print("FULL-TASK", type(e).__name__)
        assert aray.get(refs[3])[0] == 3
        from aray import _global
        core = _global.core()
        store, spill = core.store.path, core.store.spill_path
        del refs
        wait_until(lambda: aray.object_store_stats()["num_objects"] == 0, 10,
                   message="the dropped objects to be freed")
        print("AFTER", aray.object_store_stats())
        assert aray.object_store_stats()["num_objects"] == 0
        report_pids()
        aray.shutdown()
        assert not os.path.exists(store) and not os.path.exists(spill)
        print("OK")
    """, timeout=120)
    assert "FULL an object of 60.0 MiB does not fit" in r.stdout and "50.0 MiB" in r.stdout
    assert "FULL-TASK" in r.stdout and "OK" in r.stdout
    r.assert_no_leftovers()


def test_dropped_results_are_freed(run_script):
    r = run_script("""
        import numpy as np
        aray.init(num_cpus=2, object_store_memory=20 * 2**20)
        @aray.remote
        def make(i):
            return np.full(2**20 // 8, i)  # 1 MiB
        for start in range(0, 1000, 50):
            refs = [make.remote(i) for i in range(start, start + 50)]
            aray.wait(refs, num_returns=len(refs))
            del refs
        wait_until(lambda: aray.object_store_stats()["num_objects"] == 0
                   and aray.object_store_stats()["used_bytes"] == 0, 10,
                   message="the dropped results to be freed")
        stats = aray.object_store_stats()
        print("STATS", stats)
        assert stats["num_objects"] == 0 and stats["used_bytes"] == 0, stats
        assert stats["num_spilled"] == 0, stats
        aray.shutdown()
    """, timeout=180)
    assert "STATS" in r.stdout


def test_a_dead_writers_temp_files_are_removed(run_script):
    r = run_script("""
        aray.init(num_cpus=1)
        @aray.remote
        def start_writing():
            from aray import _global
            store = _global.core().store.path
            # what a worker killed in the middle of writing leaves behind
            open(os.path.join(store, f".{'ab' * 16}.{os.getpid()}.tmp"), "w").write("half")
            os._exit(1)
        from aray import _global
        store = _global.core().store.path
        try:
            aray.get(start_writing.options(max_retries=0).remote())
        except aray.exceptions.WorkerCrashedError:
            pass
        wait_until(lambda: not [n for n in os.listdir(store) if n.endswith(".tmp")], 10,
                   message="the dead writer's temporary file to be removed")
        print("LEFT", [n for n in os.listdir(store) if n.endswith(".tmp")])
        aray.shutdown()
    """)
    assert "LEFT []" in r.stdout


def test_store_reads_are_zero_copy_in_tasks(run_script):
    r = run_script("""
        import numpy as np
        aray.init(num_cpus=1)
        ref = aray.put(np.arange(2_000_000))
        @aray.remote
        def inspect(a):
            return a.flags.owndata, a.flags.writeable, int(a.sum())
        print("RESULT", aray.get(inspect.remote(ref)))
        aray.shutdown()
    """)
    assert f"RESULT (False, False, {int(np.arange(2_000_000).sum())})" in r.stdout


def test_store_accounts_spill_oldest_first_and_count_disk_writes():
    from aray.store.service import StoreAccounts

    acc = StoreAccounts(capacity=100)
    assert acc.sealed(b"a", 40) == [] and acc.sealed(b"b", 40) == []
    assert acc.sealed(b"c", 40) == [b"a"]  # 120 > 100: the oldest goes to disk
    acc.spill_done(b"a", True)
    assert acc.stats()["used_bytes"] == 80 and acc.stats()["spilled_bytes"] == 40
    assert acc.sealed(b"d", 30, on_disk=True) == []  # written to disk: memory use unchanged
    assert acc.stats() == {"used_bytes": 80, "capacity_bytes": 100, "num_objects": 4,
                           "spilled_bytes": 70, "num_spilled": 2}
    for oid in (b"a", b"b", b"c", b"d"):
        acc.deleted(oid)
    assert acc.stats()["used_bytes"] == 0 and acc.stats()["spilled_bytes"] == 0


class _NaiveAccounts:
    """What StoreAccounts must answer, recomputed from scratch at every step."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.objects = {}  # id -> [size, state, owner, order]
        self.clock = 0

    def _tick(self):
        self.clock += 1
        return self.clock

    def sealed(self, oid, size, on_disk, owner):
        if oid in self.objects:
            return []
        self.objects[oid] = [size, "disk" if on_disk else "mem", owner, self._tick()]
        return [] if on_disk else self.to_spill()

    def used(self):
        return sum(o[0] for o in self.objects.values() if o[1] != "disk")

    def to_spill(self):
        over = (self.used() - sum(o[0] for o in self.objects.values() if o[1] == "spilling")
                - self.capacity)
        chosen = []
        for oid, o in sorted(self.objects.items(), key=lambda kv: kv[1][3]):
            if over <= 0:
                break
            if o[1] == "mem":
                o[1] = "spilling"
                chosen.append(oid)
                over -= o[0]
        return chosen

    def spill_done(self, oid, ok):
        o = self.objects.get(oid)
        if o is not None and o[1] == "spilling":
            o[1] = "disk" if ok else "mem"
            if not ok:
                o[3] = self._tick()  # back of the spill order

    def deleted(self, oid):
        self.objects.pop(oid, None)

    def owned_by(self, owner):
        return sorted(oid for oid, o in self.objects.items() if o[2] == owner)

    def stats(self):
        disk = [o for o in self.objects.values() if o[1] == "disk"]
        return {"used_bytes": self.used(), "capacity_bytes": self.capacity,
                "num_objects": len(self.objects), "spilled_bytes": sum(o[0] for o in disk),
                "num_spilled": len(disk)}


def test_store_accounts_agree_with_a_model_that_recomputes_everything():
    import random

    from aray.store.service import ObjectState, StoreAccounts

    names = {"mem": ObjectState.IN_MEMORY, "spilling": ObjectState.SPILLING,
             "disk": ObjectState.ON_DISK}
    for seed in range(20):
        rng = random.Random(seed)
        acc, model = StoreAccounts(capacity=500), _NaiveAccounts(capacity=500)
        for _ in range(400):
            oid = bytes([rng.randrange(40)])
            op = rng.random()
            if op < 0.45:
                size, on_disk, owner = rng.randrange(1, 200), rng.random() < 0.1, rng.choice("xyz")
                assert acc.sealed(oid, size, on_disk, owner) == model.sealed(oid, size, on_disk,
                                                                            owner)
            elif op < 0.75:
                ok = rng.random() < 0.8
                acc.spill_done(oid, ok)
                model.spill_done(oid, ok)
            elif op < 0.95:
                acc.deleted(oid)
                model.deleted(oid)
            else:
                owner = rng.choice("xyz")
                assert sorted(acc.owned_by(owner)) == model.owned_by(owner)
            assert acc.stats() == model.stats()
            assert {k: o.state for k, o in acc.objects.items()} == {
                k: names[o[1]] for k, o in model.objects.items()}
            assert acc.to_spill() == model.to_spill()
