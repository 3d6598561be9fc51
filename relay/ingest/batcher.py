"""The scheduling half of group commit: when a batch closes, and how many run at once.

An item that finds the writer idle is sent at the end of the current loop iteration, with
whatever else arrived in it: no added latency at low load. An item that finds a batch running
opens the next batch, which closes when it reaches its weight or byte bound, or when its first
item has waited the linger; if every slot is still busy then, it goes as soon as one frees.
Under load, every batch therefore gathers about one linger's worth of requests: each write
costs the server far more than an item, so fewer, bigger batches are what buys throughput,
and the linger bounds what that costs in latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs `commit(items) -> results` (one result per item, in order) over batches of submissions.

    When `commit` raises, every item of that batch gets the exception, and no other item does.
    """

    def __init__(
        self,
        commit: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        linger_s: float,
        max_weight: int,
        max_bytes: int,
        max_in_flight: int,
    ) -> None:
        self._commit = commit
        self.linger_s = linger_s
        self.max_weight = max_weight
        self.max_bytes = max_bytes
        self.max_in_flight = max_in_flight
        self._pending: list[tuple[Item, int, int, asyncio.Future[Result]]] = []
        self._pending_weight = 0
        self._pending_bytes = 0
        self._timer: asyncio.Handle | None = None
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, item: Item, weight: int = 1, size_bytes: int = 0) -> asyncio.Future[Result]:
        """Queue `item` for the next batch; the future gets its result (or its batch's exception).

        A plain function returning the future, not a coroutine: one frame less per request.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, weight, size_bytes, future))
        self._pending_weight += weight
        self._pending_bytes += size_bytes
        if self._pending_weight >= self.max_weight or self._pending_bytes >= self.max_bytes:
            self._flush()
        elif self._timer is None:
            # Idle writer: send at the end of this loop iteration, so requests read in the same
            # iteration still share the batch. Busy writer: wait for it, at most the linger.
            if self._running:
                self._timer = loop.call_later(self.linger_s, self._flush)
            else:
                self._timer = loop.call_soon(self._flush)
        return future

    async def close(self) -> None:
        """Send everything pending, whatever the bounds, and wait until no batch runs."""
        while self._pending or self._running:
            self._flush(force=True)
            if self._running:
                await asyncio.wait(set(self._running))

    def _flush(self, force: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending and (force or len(self._running) < self.max_in_flight):
            batch = self._take()
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _take(self) -> list[tuple[Item, int, int, asyncio.Future[Result]]]:
        """The oldest pending items, up to the bounds (but always at least one)."""
        weight = size = 0
        count = 0
        for _item, item_weight, item_bytes, _future in self._pending:
            if count and (
                weight + item_weight > self.max_weight or size + item_bytes > self.max_bytes
            ):
                break
            weight += item_weight
            size += item_bytes
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._pending_weight -= weight
        self._pending_bytes -= size
        return batch

    async def _run(self, batch: list[tuple[Item, int, int, asyncio.Future[Result]]]) -> None:
        futures = [future for _item, _weight, _bytes, future in batch]
        try:
            results = await self._commit([item for item, _weight, _bytes, _future in batch])
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        # A pending batch whose linger is still running closes on time; one whose linger ran
        # out while every slot was busy (no timer left) goes now.
        if self._pending and self._timer is None:
            self._flush()
