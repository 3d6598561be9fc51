"""Tests of relay.dead_letters: storing, listing and filtering, replay into the queue, purge."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import dramatiq
import orjson
import pytest
import redis

from relay.dead_letters import DeadLetter, DeadLetters
from relay.errors import QueueUnavailable
from relay.event import Event, make_event
from relay.keys import Keys
from relay.queue import BUNDLE_MAX_EVENTS, BundleWriter
from relay.store import RelayStore

HOUR_S = 3_600.0


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@pytest.fixture
def dlq(redis_client: redis.Redis, keys: Keys) -> DeadLetters:
    return DeadLetters(redis_client, keys)


def letter(
    event_id: str,
    *,
    event_type: str = "message.new",
    age_s: float = 0.0,
    code: str = "InvalidParameter",
) -> DeadLetter:
    body = '{"type": "TYPE", "text": "caf\\u00e9 \u00e9",  "id":"ID"}'
    body = body.replace("TYPE", event_type).replace("ID", event_id)
    event = make_event(body.encode(), event_id=event_id)
    return DeadLetter(event, code, f"rejected {event_id}", time.time() - age_s)


def queued_events(redis_client: redis.Redis, keys: Keys) -> list[list[Event]]:
    """The events of each bundle waiting in the queue, in queue order."""
    bundles = []
    for rid in redis_client.lrange(keys.queue, 0, -1):
        message = dramatiq.Message.decode(redis_client.hget(keys.queue_messages, rid))
        bundles.append([Event.from_wire(item) for item in message.args[0]])
    return bundles


# --- add, get, depth ---------------------------------------------------------------------------


def test_added_letter_reads_back_with_its_event_and_error(dlq: DeadLetters) -> None:
    """A dead letter keeps the event (body byte for byte, attributes) and SNS's code and message."""
    stored = letter("e1", code="ParameterValueInvalid")
    dlq.add([stored])
    (read,) = dlq.get(["e1"])
    assert read == stored
    assert read.event.body == stored.event.body
    assert read.event.attributes == stored.event.attributes
    assert (read.code, read.message) == ("ParameterValueInvalid", "rejected e1")


def test_get_keeps_the_order_given_and_skips_missing_ids(dlq: DeadLetters) -> None:
    """Records come back in the order asked for; unknown ids are left out."""
    dlq.add([letter("a"), letter("b"), letter("c")])
    assert [dl.event.id for dl in dlq.get(["c", "missing", "a"])] == ["c", "a"]
    assert dlq.get([]) == []


def test_an_unreadable_record_is_left_out_with_a_warning_and_can_be_purged(
    dlq: DeadLetters, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Records written into Redis by other means (an id with a space, a field missing, not
    JSON) do not stop `relay dlq list` showing the rest; each is named in a warning, its id
    escaped, and `purge` by id removes it."""
    dlq.add([letter("a"), letter("b")])
    good = orjson.loads(letter("x").to_json())
    forged = {
        "evt 1\n[error] forged": orjson.dumps({**good, "event": ["evt 1", "{}", {}, 1.0]}),
        "no-code": orjson.dumps({key: value for key, value in good.items() if key != "code"}),
        "not-json": b"{",
    }
    redis_client.hset(dlq.keys.dead_letters, mapping=forged)
    redis_client.zadd(dlq.keys.dead_letter_index, {name: 0.0 for name in forged})
    with caplog.at_level(logging.WARNING, logger="relay.dead_letters"):
        listed = [dl.event.id for dl in dlq.iter()]
    assert listed == ["a", "b"]
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 3
    assert all("cannot be read, left out" in line and "\n" not in line for line in said)
    assert dlq.purge(list(forged)) == 3
    assert dlq.depth() == 2


def test_depth_counts_letters_and_a_readded_event_once(dlq: DeadLetters) -> None:
    """Depth is the number of events; an event dead-lettered again replaces its record."""
    assert dlq.depth() == 0
    dlq.add([letter("a"), letter("b")])
    dlq.add([letter("a", code="KMSInvalidState")])
    assert dlq.depth() == 2
    assert dlq.get(["a"])[0].code == "KMSInvalidState"


def test_adding_nothing_writes_nothing(
    dlq: DeadLetters, redis_client: redis.Redis, namespace: str
) -> None:
    """An empty add touches no key."""
    dlq.add([])
    assert redis_client.keys(f"{namespace}:*") == []


# --- ids and iter: order and filters -----------------------------------------------------------


def test_ids_are_oldest_first_and_filter_by_age(dlq: DeadLetters) -> None:
    """ids() lists oldest first; older_than_s keeps only letters at least that old; limit caps."""
    dlq.add([letter("new", age_s=5), letter("old", age_s=2 * HOUR_S), letter("mid", age_s=HOUR_S)])
    assert dlq.ids() == ["old", "mid", "new"]
    assert dlq.ids(older_than_s=HOUR_S / 2) == ["old", "mid"]
    assert dlq.ids(older_than_s=3 * HOUR_S) == []
    assert dlq.ids(limit=2) == ["old", "mid"]


def test_iter_filters_by_type_and_age(dlq: DeadLetters) -> None:
    """iter() yields oldest first, only the given type and only letters old enough."""
    dlq.add(
        [
            letter("r-old", event_type="reaction.new", age_s=2 * HOUR_S),
            letter("m-old", event_type="message.new", age_s=2 * HOUR_S - 1),
            letter("m-new", event_type="message.new", age_s=10),
            letter("r-new", event_type="reaction.new", age_s=5),
        ]
    )
    assert [dl.event.id for dl in dlq.iter()] == ["r-old", "m-old", "m-new", "r-new"]
    assert [dl.event.id for dl in dlq.iter(event_type="message.new")] == ["m-old", "m-new"]
    assert [dl.event.id for dl in dlq.iter(older_than_s=HOUR_S)] == ["r-old", "m-old"]
    assert [dl.event.id for dl in dlq.iter(event_type="reaction.new", older_than_s=HOUR_S)] == [
        "r-old"
    ]


def test_iter_limit_counts_matches_across_pages(dlq: DeadLetters) -> None:
    """The limit counts letters of the filtered type, even across several pages of ids."""
    dlq.add(
        [letter(f"e{i}", event_type="a" if i % 3 == 0 else "b", age_s=100 - i) for i in range(12)]
    )
    found = [dl.event.id for dl in dlq.iter(event_type="a", limit=3, page=2)]
    assert found == ["e0", "e3", "e6"]
    assert len(list(dlq.iter(page=5))) == 12


# --- replay ------------------------------------------------------------------------------------


def test_replay_moves_events_into_the_queue_and_out_of_dead_letters(
    dlq: DeadLetters, redis_client: redis.Redis, keys: Keys
) -> None:
    """Replayed events are queued as bundles, byte for byte, and no longer dead letters."""
    letters = [letter("a"), letter("b"), letter("c")]
    dlq.add([*letters, letter("stays")])
    replayed = dlq.replay(letters[:2], BundleWriter(redis_client, keys))
    assert replayed == 2
    assert queued_events(redis_client, keys) == [[letters[0].event, letters[1].event]]
    assert [b[0].body for b in queued_events(redis_client, keys)] == [letters[0].event.body]
    assert sorted(dlq.ids()) == ["c", "stays"]
    assert RelayStore(redis_client, keys).pending_events() == 2


def test_replay_of_many_letters_makes_bounded_bundles(
    dlq: DeadLetters, redis_client: redis.Redis, keys: Keys
) -> None:
    """Replaying more than BUNDLE_MAX_EVENTS letters queues several bundles, each event once."""
    letters = [letter(f"e{i}") for i in range(BUNDLE_MAX_EVENTS + 30)]
    dlq.add(letters)
    dlq.replay(letters, BundleWriter(redis_client, keys))
    bundles = queued_events(redis_client, keys)
    assert [len(bundle) for bundle in bundles] == [BUNDLE_MAX_EVENTS, 30]
    assert [event.id for bundle in bundles for event in bundle] == [dl.event.id for dl in letters]
    assert dlq.depth() == 0


def test_failed_replay_changes_neither_queue_nor_dead_letters(
    dlq: DeadLetters,
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Queueing and removal are one transaction: when it fails, both stay as they were."""
    letters = [letter("a"), letter("b")]
    dlq.add(letters)

    def fail(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("connection reset by peer")

    monkeypatch.setattr(redis.commands.core.Script, "__call__", fail)
    with pytest.raises(QueueUnavailable):
        dlq.replay(letters, BundleWriter(redis_client, keys))
    monkeypatch.undo()
    assert redis_client.llen(keys.queue) == 0
    assert redis_client.hlen(keys.queue_messages) == 0
    assert RelayStore(redis_client, keys).pending_events() == 0
    assert sorted(dlq.ids()) == ["a", "b"]
    assert dlq.get(["a", "b"]) == letters


def test_replay_runs_as_one_script(
    dlq: DeadLetters, redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue writes and the dead-letter removal go out in a single (atomic) script call."""
    letters = [letter("a"), letter("b")]
    dlq.add(letters)
    executed: list[list[Any]] = []
    real_call = redis.commands.core.Script.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        executed.append(list(kwargs["args"]))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(redis.commands.core.Script, "__call__", spy)
    dlq.replay(letters, BundleWriter(redis_client, keys))
    assert len(executed) == 1
    assert {"HSET", "RPUSH", "HDEL", "ZREM"} <= {arg for arg in executed[0] if isinstance(arg, str)}


def test_replaying_thousands_of_dead_letters_in_one_write_takes_them_all(
    dlq: DeadLetters, redis_client: redis.Redis, keys: Keys
) -> None:
    """More ids than one script command may carry (the removal is chunked): every letter is
    queued and removed, none left half-replayed."""
    letters = [letter(f"e{n}") for n in range(2_500)]
    dlq.add(letters)

    assert dlq.replay(letters, BundleWriter(redis_client, keys)) == 2_500

    assert dlq.depth() == 0
    assert RelayStore(redis_client, keys).pending_events() == 2_500


def test_letters_replayed_twice_are_queued_once(
    dlq: DeadLetters, redis_client: redis.Redis, keys: Keys
) -> None:
    """Two replays of the same letters (two `relay dlq replay` runs that read them both): the
    second finds them gone and queues nothing."""
    letters = [letter("a"), letter("b")]
    dlq.add(letters)
    writer = BundleWriter(redis_client, keys)
    assert dlq.replay(letters, writer) == 2
    assert dlq.replay(letters, writer) == 0
    assert queued_events(redis_client, keys) == [[letters[0].event, letters[1].event]]
    assert RelayStore(redis_client, keys).pending_events() == 2


def test_replay_leaves_out_letters_taken_since_they_were_read(
    dlq: DeadLetters, redis_client: redis.Redis, keys: Keys
) -> None:
    """A letter purged (or replayed elsewhere) after the replay read it is not queued; the rest
    are, in one write."""
    letters = [letter("a"), letter("b"), letter("c")]
    dlq.add(letters)
    dlq.purge(["b"])
    assert dlq.replay(letters, BundleWriter(redis_client, keys)) == 2
    assert queued_events(redis_client, keys) == [[letters[0].event, letters[2].event]]
    assert dlq.depth() == 0
    assert RelayStore(redis_client, keys).pending_events() == 2


def test_concurrent_replays_queue_each_letter_once(
    dlq: DeadLetters, redis_client: redis.Redis, keys: Keys
) -> None:
    """Four threads replay the same 400 letters in steps of 25, in different orders: every
    letter is queued exactly once, and the counts add up."""
    letters = [letter(f"e{n}") for n in range(400)]
    dlq.add(letters)
    writer = BundleWriter(redis_client, keys)
    counts: list[int] = []
    errors: list[BaseException] = []

    def replay(order: list[DeadLetter]) -> None:
        try:
            counts.append(sum(dlq.replay(order[i : i + 25], writer) for i in range(0, 400, 25)))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    orders = [letters, letters[::-1], letters[200:] + letters[:200], letters[::2] + letters[1::2]]
    threads = [threading.Thread(target=replay, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    queued = [event.id for bundle in queued_events(redis_client, keys) for event in bundle]
    assert sorted(queued) == sorted(dl.event.id for dl in letters)
    assert sum(counts) == 400
    assert dlq.depth() == 0
    assert RelayStore(redis_client, keys).pending_events() == 400


def test_replay_of_nothing_does_nothing(
    dlq: DeadLetters, redis_client: redis.Redis, keys: Keys
) -> None:
    """Replaying an empty selection queues nothing and returns 0."""
    assert dlq.replay([], BundleWriter(redis_client, keys)) == 0
    assert redis_client.llen(keys.queue) == 0


# --- purge -------------------------------------------------------------------------------------


def test_purge_by_ids_deletes_only_those(dlq: DeadLetters) -> None:
    """Purging ids removes their records and index entries and counts only those that existed."""
    dlq.add([letter("a"), letter("b"), letter("c")])
    assert dlq.purge(["a", "c", "missing"]) == 2
    assert dlq.ids() == ["b"]
    assert dlq.get(["a", "c"]) == []
    assert dlq.depth() == 1


def test_purge_all_empties_the_store(
    dlq: DeadLetters, redis_client: redis.Redis, keys: Keys
) -> None:
    """Purging without ids deletes every dead letter and reports how many there were."""
    dlq.add([letter(f"e{i}") for i in range(5)])
    assert dlq.purge() == 5
    assert dlq.depth() == 0
    assert not redis_client.exists(keys.dead_letters, keys.dead_letter_index)


def test_purge_of_an_empty_selection_deletes_nothing(dlq: DeadLetters) -> None:
    """An empty id list purges nothing (it is not 'purge all')."""
    dlq.add([letter("a")])
    assert dlq.purge([]) == 0
    assert dlq.depth() == 1
