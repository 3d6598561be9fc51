"""dramatiq's Redis broker with its known loss and stranding paths closed (FACTS §9.4).

- L1: a retry whose enqueue fails must not let the original be acked: RelayRetries keeps
  trying the enqueue until Redis answers, so the message stays unacked (and reclaimable) till then.
- L2: ids a consumer had fetched but not handed out when its connection broke stay in this live
  process's ack set; the next consumer for that queue requeues them first thing.
- L3/D5: redis-py timeouts and errors from enqueue/ack/requeue become dramatiq's ConnectionClosed,
  which the consumer thread survives, instead of killing it.
- L4: an undecodable message is moved to dramatiq's dead letters instead of wedging the consumer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.middleware import CurrentMessage, Retries, TimeLimit

from relay.keys import QUEUE_NAME, Keys
from relay.queue import redis_client
from relay.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_MS = 10_000
"""A worker silent this long is presumed dead and its in-flight bundles are requeued.

dramatiq's 60 s default makes a killed worker's bundles wait over a minute (FACTS §9.5). Live
workers heartbeat about once a second (their delay-queue consumer polls even when busy), so 10 s
leaves a wide margin against requeueing work that is merely slow (duplication path D2).
"""

MAINTENANCE_CHANCE = 100_000
"""Per million dispatch calls: 10 %, so an idle fleet (about 2 calls/s per process) finds a dead
worker within seconds of HEARTBEAT_TIMEOUT_MS instead of minutes at the 0.1 % default."""

DEAD_MESSAGE_TTL_MS = 7 * 24 * 3600 * 1000
"""dramatiq's own dead letters (bundles failed by a relay bug) are kept a week."""

RETRY_ENQUEUE_DELAY_S = 1.0
"""While Redis is unreachable, a failed retry enqueue is tried again this often."""

_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class RelayRedisBroker(RedisBroker):
    """RedisBroker whose consumers survive Redis errors without stranding or losing messages."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keys = Keys(self.namespace)
        # queue name -> redis message ids stranded in this process's ack set (L2)
        self.stranded: dict[str, set[str]] = {}
        self.stranded_lock = threading.Lock()

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return RelayConsumer

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        try:
            return super().enqueue(message, delay=delay)
        except _REDIS_ERRORS as exc:
            raise ConnectionClosed(exc) from None


class RelayConsumer(_RedisConsumer):
    """A consumer that requeues what an earlier consumer stranded, and dead-letters poison."""

    broker: RelayRedisBroker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # message id -> redis message id of messages handed out and not yet acked or nacked
        self.handed_out: dict[str, str] = {}

    def __next__(self) -> Any:
        try:
            self._requeue_stranded()
            while True:
                try:
                    proxy = super().__next__()
                except DecodeError as exc:
                    self._dead_letter_undecodable(exc.data)
                    continue
                break
        except ConnectionClosed:
            self._strand_undelivered()
            raise
        except _REDIS_ERRORS as exc:
            self._strand_undelivered()
            raise ConnectionClosed(exc) from None
        if proxy is not None:
            self.handed_out[proxy.message_id] = proxy.options["redis_message_id"]
        return proxy

    def ack(self, message: Any) -> None:
        self.handed_out.pop(message.message_id, None)
        try:
            super().ack(message)
        except redis.TimeoutError as exc:
            raise ConnectionClosed(exc) from None

    def nack(self, message: Any) -> None:
        self.handed_out.pop(message.message_id, None)
        try:
            super().nack(message)
        except redis.TimeoutError as exc:
            raise ConnectionClosed(exc) from None

    def requeue(self, messages: Any) -> None:
        messages = list(messages)
        for message in messages:
            self.handed_out.pop(message.message_id, None)
        try:
            super().requeue(messages)
        except _REDIS_ERRORS as exc:
            with self.broker.stranded_lock:
                self.broker.stranded.setdefault(self.queue_name, set()).update(
                    message.options["redis_message_id"] for message in messages
                )
            raise ConnectionClosed(exc) from None

    def _strand_undelivered(self) -> None:
        """Remember the ids this consumer holds but nobody will ack once it is dropped.

        Fetched-but-not-handed-out messages always; for a delay queue also the handed-out
        ones, since the consumer thread drops its in-memory delay queue on a connection error.
        """
        ids: set[str] = set()
        for data in self.message_cache:
            if data is None:
                continue
            try:
                ids.add(dramatiq.Message.decode(data).options["redis_message_id"])
            except (DecodeError, KeyError):
                continue  # found again by _dead_letter_undecodable's scan once Redis is back
        if self.queue_name.endswith(".DQ"):
            ids.update(self.handed_out.values())
        self.message_cache = []
        if ids:
            with self.broker.stranded_lock:
                self.broker.stranded.setdefault(self.queue_name, set()).update(ids)
            log.warning("%d messages held at a Redis connection error will be requeued", len(ids))

    def _requeue_stranded(self) -> None:
        if not self.broker.stranded.get(self.queue_name):  # the common case, without the lock
            return
        with self.broker.stranded_lock:
            ids = self.broker.stranded.get(self.queue_name)
            if not ids:
                return
            self.broker.do_requeue(self.queue_name, *sorted(ids))
            log.info("requeued %d messages stranded by a Redis connection error", len(ids))
            ids.clear()

    def _dead_letter_undecodable(self, data: bytes) -> None:
        """Move a message that cannot be decoded to dramatiq's dead letters (found by its bytes)."""
        ack_set = self.broker.keys.ack_set(self.broker.broker_id, self.queue_name)
        messages = f"{self.broker.namespace}:{self.queue_name}.msgs"
        client = self.broker.client
        for redis_id in client.smembers(ack_set):
            if client.hget(messages, redis_id) == data:
                rid = redis_id.decode() if isinstance(redis_id, bytes) else redis_id
                self.broker.do_nack(self.queue_name, rid)
                log.error("undecodable message %s moved to dead letters", rid)
                return
        log.error("an undecodable message could not be found in the ack set; it is left there")


class RelayRetries(Retries):
    """dramatiq's Retries, except that a retry is never dropped because Redis blinked (L1)."""

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if exception is None:
            return
        options = dict(message.options)  # the parent bumps retries and adds a traceback
        while True:
            try:
                super().after_process_message(broker, message, result=result, exception=exception)
                return
            except (ConnectionClosed, *_REDIS_ERRORS) as exc:
                message.options.clear()
                message.options.update(options)
                log.warning("retry enqueue failed (%s); trying again, message kept unacked", exc)
                time.sleep(RETRY_ENQUEUE_DELAY_S)


def make_broker(settings: Settings, client: redis.Redis | None = None) -> RelayRedisBroker:
    """The workers' broker: the relay's namespace and timing, and only the middleware it needs."""
    url = settings.require_redis_url()
    broker = RelayRedisBroker(
        client=client or redis_client(url, settings),
        namespace=settings.namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
        dead_message_ttl=DEAD_MESSAGE_TTL_MS,
        middleware=[TimeLimit(), RelayRetries(), CurrentMessage()],
    )
    broker.declare_queue(QUEUE_NAME)
    return broker
