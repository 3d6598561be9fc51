"""`POST /events`: read the body within its bound, check the signature, split, store, answer.

A raw ASGI endpoint, because this is the hot path: one JSON answer, no request object. The
order is the contract: size (before reading it all), signature (before any parsing), shape,
then Redis. Nothing is answered 2xx before its events are stored.

Counting, per event: received = enqueued + dropped + rejected (by reason). A body refused
before it could be split (too large, bad signature, malformed) counts as one event.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from relay import metrics
from relay.errors import InvalidEvent, QueueUnavailable
from relay.ingest.commit import Delivery
from relay.ingest.http import (
    Answer,
    ClientGone,
    HeaderReader,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
)
from relay.ingest.outcomes import answer_for, event_ids, split
from relay.ingest.payload import Body, MalformedBody, TooManyElements, parse_body
from relay.ingest.service import IngestService

log = logging.getLogger("relay.ingest")

SOURCE = "webhook"
UNAVAILABLE_RETRY_AFTER_S = 1
BACKLOG_RETRY_AFTER_S = 5
"""A backlog drains over seconds, not milliseconds; Stream retries within 15 s anyway."""

_HEADERS = HeaderReader((b"content-length", b"x-signature", b"x-webhook-id", b"x-webhook-attempt"))
# Labelled children looked up once: `labels()` per request is a lock and a dict lookup.
_RECEIVED = metrics.EVENTS_RECEIVED.labels(SOURCE)
_DURATIONS: dict[int, Any] = {}


class EventsEndpoint:
    """The ASGI callable behind `POST /events`."""

    def __init__(self, service: IngestService) -> None:
        self.service = service
        self.max_body_bytes = service.settings.ingest_max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        length, signature, webhook_id, attempt = _HEADERS.values(scope)
        try:
            answer = await self._answer(receive, length, signature, webhook_id)
        except ClientGone:
            return
        await respond(send, answer)
        duration = _DURATIONS.get(answer.status)
        if duration is None:
            duration = _DURATIONS[answer.status] = metrics.INGEST_REQUEST_DURATION.labels(
                str(answer.status)
            )
        duration.observe(time.perf_counter() - started)
        # Retries and failures are worth a line at INFO; first attempts that went fine are not.
        retried = attempt is not None and attempt != b"1"
        level = logging.INFO if retried or answer.status >= 500 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "POST /events webhook_id=%s attempt=%s -> %d %s",
                _printable(webhook_id),
                _printable(attempt),
                answer.status,
                answer.body.get("error") or answer.body.get("status", ""),
            )

    async def _answer(
        self,
        receive: Receive,
        length: bytes | None,
        signature: bytes | None,
        webhook_id: bytes | None,
    ) -> Answer:
        raw = await read_body(receive, length, self.max_body_bytes)
        if isinstance(raw, Answer):
            return _refused(raw, "body_too_large" if raw.status == 413 else "invalid")
        verifier = self.service.verifier
        if verifier is not None and not verifier.verify(raw, signature):
            what = "missing" if not signature else "not the HMAC-SHA256 of the body"
            return _refused(Answer(401, {"error": f"X-Signature is {what}"}), "bad_signature")
        try:
            body = parse_body(raw)
        except MalformedBody as exc:
            return _refused(Answer(400, {"error": exc.reason}), "invalid")
        except TooManyElements as exc:
            return _refused(Answer(413, {"error": exc.reason}), "body_too_large")
        count = len(body.elements)
        _RECEIVED.inc(count)
        try:
            ids = event_ids(webhook_id, count, body.is_array)
        except InvalidEvent as exc:
            metrics.EVENTS_REJECTED.labels("invalid").inc(count)
            return Answer(400, {"error": f"X-Webhook-Id cannot serve as an event id: {exc.reason}"})
        if count == 0:
            return Answer(200, {"status": "enqueued", "outcomes": []})
        return await self._store(body, ids, webhook_id)

    async def _store(self, body: Body, ids: list[str], webhook_id: bytes | None) -> Answer:
        view, committer = self.service.view, self.service.committer
        assert view is not None, "the service was not started"
        assert committer is not None, "the service was not started"
        try:
            state = view.cached() or await view.state()
        except QueueUnavailable as exc:
            return _unavailable(exc, len(ids))
        if view.over_bound(state):
            metrics.EVENTS_REJECTED.labels("backlog").inc(len(ids))
            bound = self.service.settings.ingest_max_backlog_events
            return Answer(503, {"error": f"backlog over {bound} events"}, BACKLOG_RETRY_AFTER_S)
        result = split(body, ids, state.limit_bytes, time.time())
        if result.invalid:
            metrics.EVENTS_REJECTED.labels("invalid").inc(result.invalid)
        storing = len(result.events) + len(result.dropped)
        if not storing:
            error = "no element is a JSON object"
            return Answer(400, {"error": error, "outcomes": result.outcomes})
        key = webhook_id.decode("ascii") if webhook_id is not None else None
        try:
            stored = await committer.submit(
                Delivery(key, result.events, result.dropped, state.limit_bytes)
            )
        except QueueUnavailable as exc:
            return _unavailable(exc, storing)
        if not stored:
            metrics.EVENTS_REJECTED.labels("duplicate").inc(storing)
            return Answer(200, {"status": "duplicate", "webhook_id": key})
        return answer_for(result)


def _refused(answer: Answer, reason: str) -> Answer:
    """A body refused before it could be split: one event received, one rejected."""
    _RECEIVED.inc()
    metrics.EVENTS_REJECTED.labels(reason).inc()
    return answer


def _unavailable(exc: QueueUnavailable, count: int) -> Answer:
    metrics.EVENTS_REJECTED.labels("unavailable").inc(count)
    return Answer(503, {"error": str(exc)}, UNAVAILABLE_RETRY_AFTER_S)


def _printable(value: bytes | None) -> str:
    """A header value fit for a log line: escaped, so a hostile header cannot forge lines."""
    return "-" if value is None else repr(value.decode("latin-1"))
