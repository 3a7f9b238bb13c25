"""A typed aray program: what pyright and mypy check in the code that uses aray.

``word_count.remote(...)`` is checked against ``word_count``'s parameters and gives an
``ObjectRef[int]``; ``aray.get`` of it is an ``int``, ``await`` of it too. ``Tally.remote(0)``
is checked against ``Tally.__init__`` and gives an ``ActorHandle[Tally]``; seen as an
``ActorProxy[Tally]``, its calls of methods marked ``@aray.method`` are checked method by
method. Run it with ``python examples/typed.py``;
check it with ``pyright examples/typed.py`` or ``mypy examples/typed.py``.
"""

from __future__ import annotations

import asyncio

import aray
from aray import ActorHandle, ActorProxy, ObjectRef


@aray.remote
def word_count(text: str) -> int:
    return len(text.split())


@aray.remote(num_cpus=0.5)
async def shout(text: str) -> str:
    return text.upper()


class Tally:
    """Keeps a running total of the counts it is given."""

    def __init__(self, start: int) -> None:
        self.total = start

    @aray.method
    def add(self, n: int) -> int:
        self.total += n
        return self.total


# the call form, not a decorator: mypy ignores what a class decorator returns
TallyActor = aray.remote(Tally)


def count_lines(lines: list[str]) -> list[int]:
    refs: list[ObjectRef[int]] = [word_count.remote(line) for line in lines]
    ready, rest = aray.wait(refs, num_returns=len(refs))
    assert not rest and len(ready) == len(refs)
    return aray.get(refs)


async def shout_all(lines: list[str]) -> list[str]:
    first: str = await shout.remote(lines[0])
    others = await aray.aio.get([shout.options(num_cpus=0.25).remote(x) for x in lines[1:]])
    return [first, *others]


def add_all(tally: ActorProxy[Tally], counts: list[int]) -> list[int]:
    # an ActorProxy checks each call against the method marked @aray.method
    return [aray.get(tally.add.remote(n)) for n in counts]


def main() -> None:
    aray.init(num_cpus=2)
    try:
        lines = ["the quick brown fox", "jumps over", "the lazy dog"]
        counts = count_lines(lines)
        tally: ActorHandle[Tally] = TallyActor.remote(0)
        totals = add_all(tally, counts)
        loud = asyncio.run(shout_all(lines))
        size: int = aray.get(aray.put(len(loud)))
        print("counts", counts, "totals", totals, "loud", loud[0], "size", size)
        assert counts == [4, 2, 3] and totals == [4, 6, 9] and size == 3
    finally:
        aray.shutdown()


if __name__ == "__main__":
    main()
