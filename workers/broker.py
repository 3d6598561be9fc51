"""dramatiq's Redis broker with its known loss and stranding paths closed (FACTS §9.4).

- L1: a retry whose enqueue fails must not let the original be acked: RelayRetries keeps
  trying the enqueue until Redis answers, so the message stays unacked (and reclaimable) till then.
- L2: after a Redis error, ids can be left in this live process's ack set that no thread here will
  ever ack: fetched and not handed out, popped by a fetch whose reply was lost, or delayed
  messages dramatiq's consumer thread dropped from memory. The consumer that replaces the failed
  one requeues, first thing, whatever the ack set holds that no thread of this process holds.
- L3/D5: redis-py timeouts and errors from enqueue/ack/requeue, and Redis refusing a write (out
  of memory, read-only), become dramatiq's ConnectionClosed, which the consumer thread survives
  (and after which dramatiq retries an ack or nack), instead of killing it.
- L4: an undecodable message is moved to dramatiq's dead letters instead of wedging the consumer.
- Full Redis: dramatiq's dispatch script (fetch, ack, heartbeat) is declared allow-oom
  (relay.queue.DrainScript), so workers drain a backlog that filled Redis to its maxmemory.
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

from relay.errors import QueueUnavailable
from relay.keys import QUEUE_NAME, Keys
from relay.queue import REFUSED_WRITES, DrainScript, as_text, redis_client, refused_access
from relay.settings import Settings
from relay.store import RelayStore

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

    def __init__(self, *, idle_poll_ms: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # dramatiq's fetch, ack and heartbeat script, declared to run when Redis is full, so a
        # backlog that filled Redis can still be drained (relay.queue.DrainScript).
        source = self.scripts["dispatch"].script
        assert isinstance(source, str | bytes), "dramatiq reads its Lua scripts from files"
        self.scripts["dispatch"] = DrainScript(self.client, source)
        self.keys = Keys(self.namespace)
        self.idle_poll_ms = idle_poll_ms
        self.access_refusal_said = False
        # queue name -> redis message ids handed to this process's threads and not yet acked,
        # nacked or requeued; anything else in this process's ack set is stranded (L2)
        self.held: dict[str, set[str]] = {}
        # queues that have had a consumer, and those whose ack set must be reconciled
        self.consumed: set[str] = set()
        self.suspect: set[str] = set()
        self.held_lock = threading.Lock()

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return RelayConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        # dramatiq's worker timeout (`timeout`) is also how long idle worker threads wait on
        # their in-process queue; only the main queue's poll decides how soon new work starts.
        # The delay queue keeps dramatiq's, so an idle process makes no more calls than it must.
        if self.idle_poll_ms is not None and not queue_name.endswith(".DQ"):
            timeout = self.idle_poll_ms
        return super().consume(queue_name, prefetch, timeout)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        try:
            return super().enqueue(message, delay=delay)
        except _REDIS_ERRORS as exc:
            raise ConnectionClosed(exc) from None

    def _dispatch(self, command: str) -> Any:
        dispatch = super()._dispatch(command)

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            try:
                return dispatch(queue_name, *args)
            except REFUSED_WRITES as exc:
                # Out of memory at maxmemory, or read-only after a failover: every dispatch
                # writes (its heartbeat first), and nothing of the call was applied. As a
                # connection error, dramatiq retries the ack or nack and the consumer thread
                # survives, and RelayRetries keeps trying the retry enqueue (L1, L3).
                raise ConnectionClosed(exc) from None

        return do_dispatch


class RelayConsumer(_RedisConsumer):
    """A consumer that requeues what its process stranded, and dead-letters poison."""

    broker: RelayRedisBroker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with self.broker.held_lock:
            if self.queue_name in self.broker.consumed:
                # This consumer replaces one that failed (dramatiq builds a new one after any
                # error). On a connection error, whether raised by a fetch or by promoting a due
                # delayed message, dramatiq's consumer thread drops its in-memory delay queue.
                self.broker.suspect.add(self.queue_name)
                if self.queue_name.endswith(".DQ"):
                    self.broker.held.pop(self.queue_name, None)
            self.broker.consumed.add(self.queue_name)

    def __next__(self) -> Any:
        try:
            self._reconcile()
            while True:
                try:
                    proxy = super().__next__()
                except DecodeError as exc:
                    self._dead_letter_undecodable(exc.data)
                    continue
                break
        except ConnectionClosed as exc:  # dramatiq's fetch wraps redis-py's ConnectionError
            cause = exc.args[0] if exc.args else None
            if isinstance(cause, BaseException) and refused_access(cause):
                self._say_access_refused(cause)
            raise
        except _REDIS_ERRORS as exc:
            if refused_access(exc):
                self._say_access_refused(exc)
            raise ConnectionClosed(exc) from None
        except redis.ResponseError as exc:
            if not refused_access(exc):  # a database it does not have: as refused as a password
                raise
            self._say_access_refused(exc)
            raise ConnectionClosed(exc) from None
        self.broker.access_refusal_said = False  # Redis answered: say it again if it refuses
        if proxy is not None:
            with self.broker.held_lock:
                self.broker.held.setdefault(self.queue_name, set()).add(
                    proxy.options["redis_message_id"]
                )
        return proxy

    def _say_access_refused(self, exc: BaseException) -> None:
        """Once per process: dramatiq's own line ("Consumer encountered a connection error"),
        repeated every few seconds, names neither the cause nor the setting to fix."""
        if not self.broker.access_refusal_said:
            self.broker.access_refusal_said = True
            log.error(
                "Redis refused the workers' access (%s: %s); check the user, password and "
                "database number in RELAY_REDIS_URL and the user's ACL. Retrying every few "
                "seconds.",
                type(exc).__name__,
                str(exc)[:200],  # the server's words: they never hold the password
            )

    def ack(self, message: Any) -> None:
        try:
            super().ack(message)
        except redis.TimeoutError as exc:
            raise ConnectionClosed(exc) from None
        self._release([message])

    def nack(self, message: Any) -> None:
        try:
            super().nack(message)
            # In dramatiq's dead letters (a bug's retries spent), the bundle's events no longer
            # wait: settled, or `relay stats` and the ingest's backlog bound count them for good.
            RelayStore(self.broker.client, self.broker.keys).settle_all(message.message_id)
        except (redis.TimeoutError, QueueUnavailable) as exc:
            raise ConnectionClosed(exc) from None
        self._release([message])

    def requeue(self, messages: Any) -> None:
        messages = list(messages)
        try:
            super().requeue(messages)
        except (ConnectionClosed, *_REDIS_ERRORS) as exc:
            with self.broker.held_lock:  # nobody holds them now: the next consumer requeues them
                self.broker.suspect.add(self.queue_name)
            raise ConnectionClosed(exc) from None
        finally:
            self._release(messages)

    def _release(self, messages: list[Any]) -> None:
        # Only once Redis has taken the id out of the ack set: _reconcile reads `held` before
        # the ack set, so an id being acked is never mistaken for a stranded one.
        with self.broker.held_lock:
            held = self.broker.held.get(self.queue_name, set())
            held.difference_update(message.options["redis_message_id"] for message in messages)

    def _reconcile(self) -> None:
        """Requeue what this process's ack set holds and none of its threads does (L2)."""
        if self.queue_name not in self.broker.suspect:  # the common case, without the lock
            return
        with self.broker.held_lock:
            held = set(self.broker.held.get(self.queue_name, ()))
        ack_set = self.broker.keys.ack_set(self.broker.broker_id, self.queue_name)
        stranded = sorted({as_text(i) for i in self.broker.client.smembers(ack_set)} - held)
        if stranded:
            self.broker.do_requeue(self.queue_name, *stranded)
            log.warning("requeued %d messages stranded by a Redis connection error", len(stranded))
        with self.broker.held_lock:
            self.broker.suspect.discard(self.queue_name)

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
        # No client-side retries: a fetch replayed after a read timeout would pop more ids while
        # the first call's stay stranded in this process's ack set, with no error to reconcile on.
        client=client or redis_client(url, settings, retries=0),
        namespace=settings.namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
        dead_message_ttl=DEAD_MESSAGE_TTL_MS,
        idle_poll_ms=settings.worker_idle_poll_ms,
        # After-hooks run in reverse order: TimeLimit clears the bundle's deadline before
        # RelayRetries may loop on a retry enqueue while Redis is down; the other way round, the
        # deadline's TimeLimitExceeded ended that loop and the bundle was acked, lost (L1).
        middleware=[RelayRetries(), TimeLimit(), CurrentMessage()],
    )
    broker.declare_queue(QUEUE_NAME)
    return broker
