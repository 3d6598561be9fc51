"""The dramatiq actor that publishes bundles, and the per-process publisher it uses.

`dramatiq workers.actors` (what `relay worker` runs) imports this module in every worker
process; the broker is configured from the same settings as the producers (FACTS §9.16).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import CurrentMessage

from relay import logs
from relay.dead_letters import DeadLetters
from relay.errors import SnsUnavailable
from relay.event import Event
from relay.keys import ACTOR_NAME, QUEUE_NAME, Keys
from relay.queue import make_broker, redis_client
from relay.settings import Settings
from relay.store import RelayStore
from workers.publisher import Publisher
from workers.sns import gateway_for

log = structlog.get_logger(__name__)

BUG_MAX_RETRIES = 3
"""dramatiq's retries are a last resort for bugs (a bundle that cannot be decoded, a crash):
three, then dramatiq's own dead letters. SNS outages never count against this (see _retry_when)."""

RETRY_MIN_BACKOFF_MS = 1_000
RETRY_MAX_BACKOFF_MS = 60_000
"""While SNS is unavailable a bundle is retried at most a minute apart, so the backlog drains
within a minute of SNS coming back (dramatiq's default would wait up to 7 days)."""

BUNDLE_TIME_LIMIT_MS = 15 * 60 * 1_000
"""Above the worst case of one bundle: 10 batches x the 20 s retry budget, plus Redis writes."""

settings = Settings.load()
logs.configure(settings.log_level, settings.log_format)
broker = make_broker(settings)
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)

_publisher: Publisher | None = None
_publisher_pid: int | None = None
_publisher_lock = threading.Lock()


def publisher() -> Publisher:
    """This process's publisher, made on first use: after fork, as boto3 clients can't cross one."""
    global _publisher, _publisher_pid
    with _publisher_lock:
        if _publisher is None or _publisher_pid != os.getpid():
            client = redis_client(settings.require_redis_url(), settings)
            keys = Keys(settings.namespace)
            _publisher = Publisher(
                settings, gateway_for(settings), RelayStore(client, keys), DeadLetters(client, keys)
            )
            _publisher_pid = os.getpid()
        return _publisher


def _retry_when(retries: int, exception: BaseException) -> bool:
    return isinstance(exception, SnsUnavailable) or retries < BUG_MAX_RETRIES


@dramatiq.actor(
    actor_name=ACTOR_NAME,
    queue_name=QUEUE_NAME,
    retry_when=_retry_when,
    min_backoff=RETRY_MIN_BACKOFF_MS,
    max_backoff=RETRY_MAX_BACKOFF_MS,
    time_limit=BUNDLE_TIME_LIMIT_MS,
)
def publish_bundle(events: list[Any]) -> None:
    """Publish one bundle; see workers.publisher for what happens to each event."""
    message = CurrentMessage.get_current_message()
    bundle_id = message.message_id if message is not None else ""
    this = publisher()
    decoded = [Event.from_wire(item) for item in events]
    try:
        this.publish(decoded)
    except SnsUnavailable as exc:
        # dramatiq re-encodes this same args list when it schedules the retry, so trimming it
        # in place makes the retry carry only the events SNS has not accepted: no duplicates
        # of what this attempt already published.
        events[:] = [event.to_wire() for event in exc.remaining]
        this.store.settle(bundle_id, len(decoded) - len(exc.remaining))
        log.warning("sns unavailable", waiting_events=len(exc.remaining), error=str(exc))
        raise
    this.store.settle(bundle_id, len(decoded))
