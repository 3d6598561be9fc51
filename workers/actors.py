"""The dramatiq actor that publishes bundles, and the per-process parts it uses.

`dramatiq workers.actors` (what `relay worker` runs) imports this module in every worker
process; the broker is configured from the same settings as the producers (FACTS §9.16).
"""

from __future__ import annotations

import functools
import gc
import os
import socket
import threading
import time
from collections import Counter
from typing import Any

import dramatiq
import orjson
import redis
import structlog
from dramatiq.middleware import CurrentMessage, Middleware

from relay import logs
from relay.dead_letters import DeadLetters
from relay.errors import QueueUnavailable, SnsUnavailable
from relay.event import Event
from relay.keys import ACTOR_NAME, QUEUE_NAME, Keys
from relay.queue import BundleWriter, bundles, redis_client
from relay.settings import Settings
from relay.store import RelayStore
from workers.breaker import CircuitBreaker, State
from workers.broker import make_broker
from workers.publisher import BundleResult, Publisher
from workers.sns import gateway_for, renew_gateway

log = structlog.get_logger(__name__)

BUG_MAX_RETRIES = 3
"""dramatiq's retries are a last resort for bugs (a bundle that cannot be decoded, a crash):
three, then dramatiq's own dead letters. SNS outages never reach them (the breaker holds), nor
do Redis failures (retried until Redis answers: see _retry_when)."""

RETRY_MIN_BACKOFF_MS = 1_000
RETRY_MAX_BACKOFF_MS = 60_000

BUNDLE_TIME_LIMIT_MS = 15 * 60 * 1_000
BREAKER_HOLD_S = 5 * 60.0
"""A bundle held this long behind an open breaker goes back to the queue (as a new bundle of
its unpublished events), well inside BUNDLE_TIME_LIMIT_MS."""

BREAKER_RECORD_TTL_S = 120
"""An open breaker's Redis record (for `relay stats`) outlives its refreshes by this much."""

settings = Settings.load()
logs.configure(settings.log_level, settings.log_format)
broker = make_broker(settings)
dramatiq.set_broker(broker)
keys = Keys(settings.namespace)
process_name = f"{socket.gethostname()}:{os.getpid()}"


def _record_breaker(state: State, reason: str) -> None:
    """Best effort: `relay stats` shows open breakers; a Redis outage must not block the breaker."""
    client = broker.client
    try:
        if state is State.CLOSED:
            client.delete(keys.breaker(process_name))
        else:
            record = {"state": state.value, "reason": reason, "at_s": time.time()}
            client.set(keys.breaker(process_name), orjson.dumps(record), ex=BREAKER_RECORD_TTL_S)
    except redis.RedisError:
        pass


breaker = CircuitBreaker(on_change=_record_breaker)


class StopHolding(Middleware):
    """On shutdown, threads holding bundles behind an open breaker give them back at once."""

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        breaker.stop()


class MakePublisher(Middleware):
    """Each worker process makes its publisher as it boots, not inside its first bundle.

    Making the SNS client (botocore loads and parses its service model) costs a worker process
    more CPU than hundreds of bundles; done here, no bundle waits on it. Should it fail, the first
    bundle tries again and fails where dramatiq retries it, as if nothing had been tried here.
    Then what the process booted with is frozen out of the garbage collector's full passes.
    """

    def after_process_boot(self, broker: Any) -> None:
        try:
            publisher()
        except Exception as exc:
            log.warning("could not make the publisher at boot", error=type(exc).__name__)
        # What the process holds now (modules, botocore's models, the publisher) lives as long
        # as it does: frozen, a full collection no longer walks it. Measured in make bench's
        # relay-lean flood: a worker process's full collection took 94 and 145 ms unfrozen,
        # every thread of the process stalled meanwhile, and 1.3 ms frozen.
        gc.freeze()


broker.add_middleware(StopHolding())
broker.add_middleware(MakePublisher())

_publisher: Publisher | None = None
_publisher_pid: int | None = None
_publisher_lock = threading.Lock()


def publisher() -> Publisher:
    """This process's publisher, made on first use: after fork, as boto3 clients can't cross one."""
    global _publisher, _publisher_pid
    with _publisher_lock:
        if _publisher is None or _publisher_pid != os.getpid():
            client = redis_client(settings.require_redis_url(), settings)
            _publisher = Publisher(
                settings,
                gateway_for(settings),
                RelayStore(client, keys),
                DeadLetters(client, keys),
                renew_gateway=functools.partial(renew_gateway, settings),
            )
            _publisher_pid = os.getpid()
        return _publisher


def _retry_when(retries: int, exception: BaseException) -> bool:
    """Redis failing is no bug: such a bundle is retried for as long as it takes (backing off to
    RETRY_MAX_BACKOFF_MS), never parked in dramatiq's dead letters, which `relay dlq` cannot
    replay. Anything else is retried BUG_MAX_RETRIES times."""
    return isinstance(exception, QueueUnavailable) or retries < BUG_MAX_RETRIES


@dramatiq.actor(
    actor_name=ACTOR_NAME,
    queue_name=QUEUE_NAME,
    retry_when=_retry_when,
    min_backoff=RETRY_MIN_BACKOFF_MS,
    max_backoff=RETRY_MAX_BACKOFF_MS,
    time_limit=BUNDLE_TIME_LIMIT_MS,
)
def publish_bundle(events: list[Any]) -> None:
    """Publish one bundle; every event ends published, dropped, dead-lettered, or back in Redis."""
    message = CurrentMessage.get_current_message()
    bundle_id = message.message_id if message is not None else ""
    this = publisher()
    pending = [Event.from_wire(item) for item in events]
    hold_until = time.monotonic() + BREAKER_HOLD_S
    # The bundle's outcomes for `relay stats`, written with its settle (one round trip a bundle).
    totals: Counter[str] = Counter()
    while pending:
        if not breaker.acquire(timeout_s=hold_until - time.monotonic()):
            try:
                # Back at the tail of the queue, with the age it had: `relay stats` and
                # relay_queue_oldest_age_seconds count the wait from when it was first queued.
                BundleWriter(this.store.client, keys).write(
                    list(bundles(pending)),
                    queued_at_ms=message.message_timestamp if message is not None else None,
                )
            except BaseException:
                # dramatiq retries the trimmed args; what earlier attempts published is counted
                # now, as the retry's settle will count only its own.
                this.add_totals(totals)
                raise
            log.info("bundle given back to the queue", events=len(pending), reason=breaker.reason)
            break
        result = BundleResult()
        try:
            this.publish(pending, result, record_totals=False)
        except SnsUnavailable as exc:
            totals.update(result.totals())
            breaker.failed(str(exc))
            pending = exc.remaining
            # Should this attempt end in an error, dramatiq retries this same args list:
            # trimmed in place, the retry carries only what SNS has not accepted yet.
            events[:] = [event.to_wire() for event in pending]
            continue
        except BaseException:
            totals.update(result.totals())
            breaker.release()
            # Redis failing while recording a drop or a dead letter, say: the retry must not
            # publish again what this attempt published, nor count it twice.
            events[:] = [event.to_wire() for event in pending if id(event) not in result.settled]
            this.add_totals(totals)
            raise
        totals.update(result.totals())
        if result.sns_answered:
            breaker.succeeded()
        else:  # every event dropped before a request: no verdict on SNS, open or not
            breaker.release()
        pending = []
    # Everything the bundle still counts as pending is settled, including events an earlier
    # attempt published before this retry was trimmed to the rest.
    try:
        this.store.settle_all(bundle_id, totals)
    except QueueUnavailable as exc:
        # Every event is settled or back in the queue as a new bundle: dramatiq's retry of this
        # args list must not send, drop or dead-letter any of them again, only settle.
        events[:] = []
        if not exc.maybe_stored:  # the settle did not run, so neither did its totals
            this.add_totals(totals)
        raise
    except BaseException:
        events[:] = []
        raise
