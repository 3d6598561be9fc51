"""Tests of relay.ingest.batcher: when batches close, how many run, and who sees a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from relay.ingest.batcher import Batcher

LONG_S = 60.0
"""A linger no test may wait for: a test that needed it would hit its own timeout instead."""


class Recorder:
    """A commit function that records its batches and can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.hold = False
        self.fail_on: set[str] = set()

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        if self.hold:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        if self.fail_on & set(items):
            raise RuntimeError(f"batch {list(items)} failed")
        return [item.upper() for item in items]


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(10):
            return await test()

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (the test's timeout bounds the wait)."""
    while not condition():
        await asyncio.sleep(0)


async def yield_to_loop(iterations: int = 5) -> None:
    """Let the loop run a few iterations: ready callbacks and zero-delay timers fire."""
    for _ in range(iterations):
        await asyncio.sleep(0)


def batcher(recorder: Recorder, **options: Any) -> Batcher[str, str]:
    values = {"linger_s": LONG_S, "max_weight": 100, "max_bytes": 1 << 20, "max_in_flight": 1}
    return Batcher(recorder, **(values | options))


def test_an_idle_writer_commits_at_once_without_lingering() -> None:
    """With nothing in flight, a lone item is committed in the next loop iteration."""
    recorder = Recorder()

    async def test() -> str:
        return await batcher(recorder).submit("a")

    assert run(test) == "A"
    assert recorder.batches == [["a"]]


def test_items_submitted_together_share_one_batch() -> None:
    """Items that arrive in the same loop iteration go into one commit, results in order."""
    recorder = Recorder()

    async def test() -> list[str]:
        b = batcher(recorder)
        return list(await asyncio.gather(*(b.submit(x) for x in "abcde")))

    assert run(test) == list("ABCDE")
    assert recorder.batches == [list("abcde")]


def test_items_arriving_during_a_commit_gather_for_the_linger_not_its_end() -> None:
    """Items that find a batch running wait for their linger, even after that batch ends."""
    recorder = Recorder()
    recorder.hold = True

    async def test() -> list[str]:
        b = batcher(recorder)
        first = asyncio.ensure_future(b.submit("a"))
        await until(lambda: len(recorder.gates) == 1)
        later = [asyncio.ensure_future(b.submit(x)) for x in "bcd"]
        recorder.hold = False
        recorder.gates[0].set()
        results = [await first]
        await yield_to_loop()
        assert recorder.batches == [["a"]]  # b, c, d still gathering: their linger is long
        await b.close()
        return results + [await f for f in later]

    assert run(test) == list("ABCD")
    assert recorder.batches == [["a"], list("bcd")]


def test_a_batch_whose_linger_ran_out_goes_as_soon_as_a_slot_frees() -> None:
    """With every slot busy when its linger ends, a batch is sent when the running one ends."""
    recorder = Recorder()
    recorder.hold = True

    async def test() -> str:
        b = batcher(recorder, linger_s=0.0)
        first = asyncio.ensure_future(b.submit("a"))
        await until(lambda: len(recorder.gates) == 1)
        second = asyncio.ensure_future(b.submit("b"))
        await yield_to_loop()  # the zero linger has run out; the only slot is busy
        assert recorder.batches == [["a"]]
        recorder.hold = False
        recorder.gates[0].set()
        await first
        return await second

    assert run(test) == "B"
    assert recorder.batches == [["a"], ["b"]]


def test_a_failed_commit_fails_exactly_the_items_in_it() -> None:
    """Items of a failed batch get its error; items of other batches get their results."""
    recorder = Recorder()
    recorder.hold = True
    recorder.fail_on = {"bad"}

    async def test() -> list[Any]:
        b = batcher(recorder, linger_s=0.0)
        failing = [asyncio.ensure_future(b.submit(x)) for x in ("bad", "x")]
        await until(lambda: len(recorder.gates) == 1)
        fine = [asyncio.ensure_future(b.submit(x)) for x in "yz"]
        recorder.hold = False
        recorder.gates[0].set()
        return list(await asyncio.gather(*failing, *fine, return_exceptions=True))

    bad, x, y, z = run(test)
    assert isinstance(bad, RuntimeError)
    assert x is bad
    assert (y, z) == ("Y", "Z")


def test_weight_and_byte_bounds_split_batches() -> None:
    """A batch closes at its weight or byte bound; a single heavier item still goes alone."""
    recorder = Recorder()

    async def test() -> None:
        b = batcher(recorder, max_weight=3, max_bytes=100, max_in_flight=8)
        await asyncio.gather(
            b.submit("a", 2), b.submit("b", 2), b.submit("c", 5), b.submit("d", 1, 150)
        )

    run(test)
    assert recorder.batches == [["a"], ["b"], ["c"], ["d"]]


def test_the_linger_bounds_the_wait_behind_a_slow_commit() -> None:
    """With a second slot free, an item waits at most the linger, not for the slow commit."""
    recorder = Recorder()
    recorder.hold = True

    async def test() -> str:
        b = batcher(recorder, linger_s=0.005, max_in_flight=2)
        slow = asyncio.ensure_future(b.submit("slow"))
        await until(lambda: len(recorder.gates) == 1)
        recorder.hold = False
        result = await b.submit("quick")
        recorder.gates[0].set()
        await slow
        return result

    assert run(test) == "QUICK"
    assert recorder.batches == [["slow"], ["quick"]]


def test_close_commits_what_is_pending_and_waits_for_it() -> None:
    """close() sends pending items even with every slot busy, and returns when all are done."""
    recorder = Recorder()
    recorder.hold = True

    async def test() -> list[str]:
        b = batcher(recorder)
        futures = [asyncio.ensure_future(b.submit(x)) for x in "ab"]
        await until(lambda: len(recorder.gates) == 1)
        futures.append(asyncio.ensure_future(b.submit("c")))
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(b.close())
        await until(lambda: len(recorder.gates) == 2)
        for gate in recorder.gates:
            gate.set()
        await closing
        assert all(f.done() for f in futures)
        return [f.result() for f in futures]

    assert run(test) == ["A", "B", "C"]


@pytest.mark.parametrize("in_flight", [1, 3])
def test_never_more_batches_run_than_allowed(in_flight: int) -> None:
    """However many items arrive, at most `max_in_flight` commits run at once."""
    running = 0
    peak = 0

    async def commit(items: Sequence[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return list(items)

    async def test() -> list[int]:
        b: Batcher[int, int] = Batcher(
            commit, linger_s=0.0, max_weight=2, max_bytes=1 << 20, max_in_flight=in_flight
        )
        return list(await asyncio.gather(*(b.submit(i) for i in range(50))))

    assert run(test) == list(range(50))
    assert peak == in_flight
