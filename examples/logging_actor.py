"""One actor collects the log messages of many tasks (question 10 of the seed tutorial).

The LoggingActor is the tutorial's. Its handle is passed to every task; each task logs its
steps through it, from its own worker process, and the driver reads all the logs at the end.

Each task waits for its last `log` call before it returns: calls made by different
processes reach the actor in no particular order among each other, so without the wait the
driver's `get_logs` call could overtake them.

Run it with:

    python examples/logging_actor.py
"""

import datetime
import time
from collections import defaultdict

import aray


@aray.remote
class LoggingActor:
    def __init__(self):
        self.logs = defaultdict(lambda: [])

    def log(self, index, message):
        message = message + datetime.datetime.now().strftime("  %Y%m%d %H:%M:%S")
        self.logs[index].append(message)

    def get_logs(self):
        return dict(self.logs)


@aray.remote
def work(logger, index, steps=3):
    for step in range(steps):
        time.sleep(0.02)  # stands in for real work
        # One caller's calls reach the actor in order, so the steps stay in order.
        last = logger.log.remote(index, f"task {index}: step {step + 1}/{steps}")
    aray.get(last)  # make sure the messages are logged before the task returns
    return index * index


if __name__ == "__main__":
    aray.init(num_cpus=2)
    logging_actor = LoggingActor.remote()
    logging_actor.log.remote("driver", "starting 8 tasks")

    results = aray.get([work.remote(logging_actor, i) for i in range(8)])
    print("task results:", results)

    logs = aray.get(logging_actor.get_logs.remote())
    print(f"the actor holds {sum(map(len, logs.values()))} messages from {len(logs)} sources:")
    print("  [driver]", logs.pop("driver")[0])
    for index in sorted(logs):
        print(f"  [{index}]", " | ".join(logs[index]) if index == 0 else
              f"{len(logs[index])} messages, the last: {logs[index][-1]}")
    aray.shutdown()
