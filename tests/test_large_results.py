"""Large results of async code are written to the store off the worker's loop.

An async actor serves its calls on one event loop; writing a large result into shared memory
on that loop would stall every other call of the actor until the copy is done.
"""


def test_an_async_actor_answers_while_it_writes_a_large_result(run_script):
    r = run_script("""
        import numpy as np
        aray.init(num_cpus=1, object_store_memory=1024 * 2**20)

        @aray.remote
        class Maker:
            def __init__(self):
                self.array = None

            async def prepare(self, mib):
                self.array = np.ones(mib * 2**20 // 8)  # made beforehand: only the write counts

            async def big(self):
                return self.array

            async def ping(self):
                return "pong"

        m = Maker.remote()
        aray.get(m.prepare.remote(200), timeout=60)
        aray.get(m.ping.remote(), timeout=60)
        early = 0
        for _ in range(3):
            big = m.big.remote()
            ping = m.ping.remote()  # reaches the actor while it writes the 200 MB result
            assert aray.get(ping, timeout=60) == "pong"
            ready, _ = aray.wait([big], timeout=0)
            early += not ready  # answered before the big result was even stored
            value = aray.get(big, timeout=60)
            assert value.nbytes == 200 * 2**20 and value[0] == 1.0 and value[-1] == 1.0
            del value, big
        print("EARLY", early)
        assert early >= 2, early
        report_pids()
        aray.shutdown()
        print("OK")
    """, timeout=180)
    assert "OK" in r.stdout, r.stdout + r.stderr
    r.assert_no_leftovers()
