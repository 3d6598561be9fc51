"""Dead letters: events SNS rejected for themselves, kept with the error until replayed or purged.

Only a per-event rejection (tier 3 of DESIGN) lands here. An outage or bad credentials never do:
those events wait in the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson
import redis

from relay.errors import InvalidEvent
from relay.event import Event
from relay.keys import Keys
from relay.queue import (
    BundleWriter,
    CommandRecorder,
    as_text,
    bundles,
    command_chunks,
    translate_redis_errors,
    write_once_if_present,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered event and why SNS rejected it."""

    event: Event
    code: str
    message: str
    at_s: float

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "event": self.event.to_wire(),
                "code": self.code,
                "message": self.message,
                "at_s": self.at_s,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        data = orjson.loads(raw)
        return cls(Event.from_wire(data["event"]), data["code"], data["message"], data["at_s"])


class DeadLetters:
    """The dead-letter store of one namespace: a hash of records and a zset index by time."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def add(self, letters: Sequence[DeadLetter]) -> None:
        """Store dead letters in one transaction; an event dead-lettered again is overwritten."""
        if not letters:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.dead_letters, mapping={dl.event.id: dl.to_json() for dl in letters})
        pipe.zadd(self.keys.dead_letter_index, {dl.event.id: dl.at_s for dl in letters})
        with translate_redis_errors(self.client):
            pipe.execute()

    def depth(self) -> int:
        with translate_redis_errors(self.client, writes=False):
            return int(self.client.zcard(self.keys.dead_letter_index))

    def ids(self, *, older_than_s: float | None = None, limit: int | None = None) -> list[str]:
        """Ids, oldest first; only those dead-lettered at least `older_than_s` ago when given."""
        newest = "+inf" if older_than_s is None else time.time() - older_than_s
        with translate_redis_errors(self.client, writes=False):
            raw = self.client.zrangebyscore(
                self.keys.dead_letter_index,
                "-inf",
                newest,
                start=0 if limit is not None else None,
                num=limit,
            )
        return [as_text(item) for item in raw if isinstance(item, bytes | str)]

    def get(self, event_ids: Sequence[str]) -> list[DeadLetter]:
        """The records of `event_ids` that exist, in the order given.

        A record that cannot be read (written by other means than the relay) is left out with a
        warning, so one bad record does not hide the rest; `purge` by its id removes it.
        """
        if not event_ids:
            return []
        with translate_redis_errors(self.client, writes=False):
            raw = self.client.hmget(self.keys.dead_letters, list(event_ids))
        letters = []
        for event_id, item in zip(event_ids, raw, strict=True):
            if item is None:
                continue
            try:
                letters.append(DeadLetter.from_json(item))
            except (InvalidEvent, orjson.JSONDecodeError, KeyError, TypeError) as exc:
                # repr: the id comes from Redis, and a newline in it must not forge a log line
                log.warning("dead letter %r cannot be read, left out: %s", event_id, exc)
        return letters

    def existing(self, event_ids: Sequence[str]) -> set[str]:
        """Those of `event_ids` that have a record or an index entry, readable or not."""
        if not event_ids:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.hexists(self.keys.dead_letters, event_id)
            pipe.zscore(self.keys.dead_letter_index, event_id)
        with translate_redis_errors(self.client, writes=False):
            found = pipe.execute()
        return {
            event_id
            for event_id, in_hash, score in zip(event_ids, found[::2], found[1::2], strict=True)
            if in_hash or score is not None
        }

    def iter(
        self,
        *,
        event_type: str | None = None,
        older_than_s: float | None = None,
        limit: int | None = None,
        page: int = 500,
    ) -> Iterator[DeadLetter]:
        """Dead letters oldest first, filtered by event type and age."""
        ids = self.ids(older_than_s=older_than_s)
        yielded = 0
        for start in range(0, len(ids), page):
            for letter in self.get(ids[start : start + page]):
                if event_type is not None and letter.event.type != event_type:
                    continue
                yield letter
                yielded += 1
                if limit is not None and yielded >= limit:
                    return

    def replay(self, letters: Sequence[DeadLetter], writer: BundleWriter) -> int:
        """Send events back through the queue and remove them from dead letters, atomically.

        Only letters still dead when the write runs are sent: one another replay (or a purge)
        took meanwhile is left out, so each dead letter re-enters the queue once. Returns how
        many were sent.
        """
        pending = list(letters)
        while pending:
            events = [letter.event for letter in pending]
            ids = [event.id for event in events]
            commands = CommandRecorder()
            writer.write(list(bundles(events)), pipe=commands)
            for chunk in command_chunks(ids):
                commands.hdel(self.keys.dead_letters, *chunk)
                commands.zrem(self.keys.dead_letter_index, *chunk)
            gone = write_once_if_present(
                self.client, self.keys, commands, self.keys.dead_letters, ids
            )
            if not gone:
                return len(events)
            taken = set(gone)
            pending = [letter for letter in pending if letter.event.id not in taken]
        return 0

    def purge(self, event_ids: Sequence[str] | None = None) -> int:
        """Delete the given dead letters, or all of them; returns how many were deleted."""
        with translate_redis_errors(self.client):
            if event_ids is None:
                count = int(self.client.zcard(self.keys.dead_letter_index))
                self.client.delete(self.keys.dead_letters, self.keys.dead_letter_index)
                return count
            if not event_ids:
                return 0
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.keys.dead_letters, *event_ids)
            pipe.zrem(self.keys.dead_letter_index, *event_ids)
            removed, _ = pipe.execute()
            return int(removed)
