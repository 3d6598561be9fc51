"""Names in Redis: the dramatiq queue and actor, and the relay's own keys. One home for each.

Every producer, ingest and worker must agree on these (FACTS §9.16), so nothing else spells them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QUEUE_NAME = "events"
ACTOR_NAME = "publish_bundle"

DROPPED_LOG_MAX_ENTRIES = 10_000
"""The dropped-events log keeps the newest entries only; counts are kept in full."""


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of one relay namespace (`RELAY_NAMESPACE`)."""

    namespace: str

    @property
    def queue(self) -> str:
        """dramatiq's list of message ids waiting (FACTS §9.1)."""
        return f"{self.namespace}:{QUEUE_NAME}"

    @property
    def queue_messages(self) -> str:
        """dramatiq's hash of message id to encoded message."""
        return f"{self.namespace}:{QUEUE_NAME}.msgs"

    @property
    def delay_queue_messages(self) -> str:
        return f"{self.namespace}:{QUEUE_NAME}.DQ.msgs"

    def ack_set(self, broker_id: str, queue_name: str) -> str:
        """dramatiq's set of ids one worker process fetched from a queue and has not acked yet."""
        return f"{self.namespace}:__acks__.{broker_id}.{queue_name}"

    @property
    def dramatiq_dead_letters(self) -> str:
        """dramatiq's own dead-letter zset: bundles that failed for a bug, not an SNS rejection."""
        return f"{self.namespace}:{QUEUE_NAME}.XQ"

    @property
    def dramatiq_dead_messages(self) -> str:
        """The messages of dramatiq's dead-letter zset, by the same ids."""
        return f"{self.dramatiq_dead_letters}.msgs"

    @property
    def pending_bundles(self) -> str:
        """Hash of dramatiq message id to event count, for bundles not yet settled by a worker."""
        return f"{self.namespace}:relay:pending:bundles"

    @property
    def pending_ages(self) -> str:
        """Zset of dramatiq message id by when its bundle was queued (ms), for bundles not yet
        settled: the oldest waiting age, whether a bundle is in the queue or taken by a worker
        (held behind an open breaker, retrying, prefetched)."""
        return f"{self.namespace}:relay:pending:ages"

    @property
    def pending_events(self) -> str:
        """Events enqueued and not yet settled (published, dropped or dead-lettered)."""
        return f"{self.namespace}:relay:pending:events"

    @property
    def dropped_log(self) -> str:
        """Capped list of JSON records of dropped events, newest first."""
        return f"{self.namespace}:relay:dropped"

    @property
    def dropped_counts(self) -> str:
        """Hash of drop reason to count, across all processes, never trimmed."""
        return f"{self.namespace}:relay:dropped:counts"

    @property
    def dead_letters(self) -> str:
        """Hash of event id to JSON dead-letter record (the event and SNS's error)."""
        return f"{self.namespace}:relay:dlq"

    @property
    def dead_letter_index(self) -> str:
        """Zset of event id by dead-letter time, for listing in order and by age."""
        return f"{self.namespace}:relay:dlq:index"

    @property
    def totals(self) -> str:
        """Hash of fleet-wide counters (enqueued, published, ...) for `relay stats`."""
        return f"{self.namespace}:relay:totals"

    def breaker(self, process: str) -> str:
        """One worker process's open circuit breaker (JSON), expiring unless refreshed."""
        return f"{self.namespace}:relay:breaker:{process}"

    @property
    def breaker_pattern(self) -> str:
        """A SCAN MATCH pattern for every `breaker` key: the namespace's glob characters
        (`* ? [ ] \\`) escaped, so a namespace like `relay[eu]` matches itself."""
        return f"{glob_escape(self.namespace)}:relay:breaker:*"

    def webhook_seen(self, webhook_id: str) -> str:
        """Marks a webhook delivery id (`X-Webhook-Id`) as stored, for the dedup window."""
        return f"{self.namespace}:relay:webhook-seen:{webhook_id}"

    def write_done(self, token: str) -> str:
        """Marks one transaction of a producer as applied, so a replay of it applies nothing."""
        return f"{self.namespace}:relay:write-done:{token}"

    def topic_limit(self, topic_arn: str) -> str:
        """The topic's `MaximumMessageSize` as the workers last read it from SNS."""
        return f"{self.namespace}:relay:topic-limit:{topic_arn}"


_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob pattern (SCAN MATCH, KEYS)."""
    return _GLOB_SPECIALS.sub(r"\\\1", text)
