"""Refs inside other values: kept while anything holds them, freed once nothing does.

Each script checks the store's object count: an object that is still referenced somewhere
must be readable, and once no reference remains anywhere its memory must be given back.
"""

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
