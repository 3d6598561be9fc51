"""A paced producer for the fault tests: Stream-shaped events through `Producer.send_many`.

It records what it was acknowledged for, and carries on through errors as a real producer does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from relay.demo_events import generate
from relay.errors import QueueUnavailable
from relay.producer import Producer, SendReport
from relay.settings import Settings

SEND_ERROR_PAUSE_S = 0.1
"""After QueueUnavailable the producer pauses this long, so a refused connection is no busy loop."""

BAD_PAYLOADS = (b"{not json", b"[1, 2, 3]", b'"just a string"', b"\xff\xfe{}")
"""Invalid inputs `send_many` must reject: not JSON, not an object (twice), not UTF-8."""


@dataclass(frozen=True)
class SendFailure:
    """A `send_many` call that raised QueueUnavailable: when it ran (monotonic) and its size."""

    started_s: float
    ended_s: float
    events: int


class LoadProducer:
    """A thread sending Stream-shaped events through `Producer.send_many` at a bounded rate.

    It records every event id it was acknowledged for (outcome "enqueued", also from a
    QueueUnavailable's report), oversize ones dropped at the producer, rejected invalid payloads
    and failed calls, and carries on after errors as a producer would.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        rate_per_s: float = 100.0,
        chunk: int = 20,
        oversize_every: int | None = None,
        invalid_every: int | None = None,
        max_events: int = 30_000,
        seed: int = 0,
    ) -> None:
        self.settings = settings
        self.rate_per_s = rate_per_s
        self.chunk = chunk
        self.oversize_every = oversize_every
        self.invalid_every = invalid_every
        self.max_events = max_events
        self.seed = seed
        self.sent = 0
        self.acknowledged: list[str] = []
        self.dropped: dict[str, str] = {}
        self.invalid = 0
        self.bad_offered = 0
        self.failures: list[SendFailure] = []
        self.unstored = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="load-producer", daemon=True)

    def start(self) -> LoadProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending; re-raise anything unexpected the thread met."""
        self._stop.set()
        self._thread.join(30.0)
        assert not self._thread.is_alive(), "the producer thread did not stop"
        if self._error is not None:
            raise AssertionError("the producer thread failed") from self._error

    def _payloads(self) -> Iterator[bytes]:
        events = generate(self.max_events, seed=self.seed, oversize_every=self.oversize_every)
        for index, body in enumerate(events, start=1):
            if self.invalid_every is not None and index % self.invalid_every == 0:
                yield BAD_PAYLOADS[index // self.invalid_every % len(BAD_PAYLOADS)]
            yield body

    def _run(self) -> None:
        try:
            with Producer(self.settings) as producer:
                began = time.monotonic()
                chunk: list[bytes] = []
                for payload in self._payloads():
                    chunk.append(payload)
                    if len(chunk) < self.chunk:
                        continue
                    due = began + (self.sent + len(chunk)) / self.rate_per_s
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        return
                    self._send(producer, chunk)
                    chunk = []
        except BaseException as exc:
            self._error = exc

    def _send(self, producer: Producer, chunk: list[bytes]) -> None:
        self.sent += len(chunk)
        self.bad_offered += sum(1 for payload in chunk if payload in BAD_PAYLOADS)
        started = time.monotonic()
        try:
            report = producer.send_many(chunk, source="api")
        except QueueUnavailable as exc:
            self.failures.append(SendFailure(started, time.monotonic(), len(chunk)))
            report = exc.report
            self._stop.wait(SEND_ERROR_PAUSE_S)
        assert isinstance(report, SendReport)
        for outcome in report.outcomes:
            if outcome.status == "enqueued":
                self.acknowledged.append(outcome.event_id)
            elif outcome.status == "dropped":
                self.dropped[outcome.event_id] = outcome.detail
            elif outcome.status == "invalid":
                self.invalid += 1
            else:
                self.unstored += 1
