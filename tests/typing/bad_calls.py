"""Deliberate mistakes that pyright and mypy must report (tests/test_typing.py runs both).

Each line with an "expect-error" comment holds one mistake; no other line may be reported. The
file is never run (pytest does not collect it: its name does not start with ``test``).
"""

from __future__ import annotations

import aray


@aray.remote
def double(x: int) -> int:
    return 2 * x


@aray.remote(num_cpus=1)
async def greet(name: str) -> str:
    return f"hello {name}"


class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    @aray.method
    def add(self, n: int) -> int:
        self.value += n
        return self.value

    @aray.method
    async def label(self, prefix: str) -> str:
        return f"{prefix}{self.value}"


CounterActor = aray.remote(Counter)


async def mistakes() -> None:
    double.remote("x")  # expect-error: a str for an int parameter
    double.remote(1, 2)  # expect-error: one argument too many
    name: str = aray.get(double.remote(1))  # expect-error: the value is an int
    greet.options(num_cpus=0.5).remote(3)  # expect-error: options keep the signature
    length: int = await greet.remote("ada")  # expect-error: awaiting gives a str
    values: list[str] = aray.get([double.remote(1)])  # expect-error: a list of ints
    stored: bytes = aray.get(aray.put(3.5))  # expect-error: put keeps the value's type
    ready, _ = aray.wait([double.remote(2)])
    text: str = aray.get(ready[0])  # expect-error: wait keeps the refs' type
    await method_mistakes(CounterActor.remote(0))
    print(name, length, values, stored, text)


async def method_mistakes(counter: aray.ActorProxy[Counter]) -> None:
    counter.add.remote("one")  # expect-error: a str for an int parameter of the method
    counter.label.remote()  # expect-error: the method's argument is missing
    total: str = aray.get(counter.add.remote(1))  # expect-error: the method returns an int
    label: int = await counter.label.remote("n")  # expect-error: the method returns a str
    print(total, label)


def constructor_mistakes() -> None:
    CounterActor.remote("zero")  # expect-error: a str for the constructor's int parameter
    CounterActor.remote()  # expect-error: the constructor's argument is missing
    CounterActor.options(num_cpus=1).remote(0, 1)  # expect-error: options keep the signature
    handle: aray.ActorHandle[str] = CounterActor.remote(0)  # expect-error: a Counter's handle
    print(handle)
