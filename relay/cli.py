"""The `relay` command line: parses arguments and calls plain functions, nothing more.

Exit codes: 0 ok, 1 the command ran and found a problem (events not enqueued, a failed check,
unaccounted demo events), 2 bad usage or configuration, 3 Redis unreachable.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from relay.errors import ConfigError, QueueUnavailable
from relay.settings import DEFAULT_WORKER_NICE, MAX_NICE, Settings

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_REDIS_DOWN = 3

SEND_CHUNK_EVENTS = 1_000

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
AT_LEAST_1 = click.IntRange(min=1)
PORT = click.IntRange(1, 65_535)


def fail(message: str, code: int) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    sys.exit(code)


def settings_or_exit(*, need_redis: bool = True, embedded_ok: bool = False) -> Settings:
    """The settings, with the Redis URL resolved (an embedded Valkey's, when one runs here)."""
    try:
        settings = Settings.load()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
        raise
    from relay import logs
    from relay.embedded import discovered_url

    logs.configure(settings.log_level, settings.log_format)

    url = discovered_url(settings)
    if url and url != settings.redis_url:
        settings = settings.model_copy(update={"redis_url": url})
    if need_redis and not settings.redis_url and not embedded_ok:
        fail(
            "RELAY_REDIS_URL is not set and no embedded Valkey is running here "
            "(start one with `relay up`)",
            EXIT_USAGE,
        )
    return settings


def handles_redis_down(func: F) -> F:
    """Map QueueUnavailable to a clean message and exit code 3."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except QueueUnavailable as exc:
            fail(str(exc), EXIT_REDIS_DOWN)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


def worker_side(module: str) -> Any:
    """Load a worker-side module on demand: `relay` itself never imports boto3 or `workers`."""
    return importlib.import_module(f"workers.{module}")


@click.group()
@click.version_option(package_name="sns-relay")
def main() -> None:
    """sns-relay: a durable Redis-backed relay of application events into Amazon SNS."""


def nice_option(function: F) -> F:
    return click.option(
        "--nice",
        type=click.IntRange(0, MAX_NICE),
        default=None,
        help="CPU niceness of the worker processes: higher yields the CPU to producers and the "
        f"ingest on a shared machine.  [default: RELAY_WORKER_NICE, else {DEFAULT_WORKER_NICE}]",
    )(function)


@main.command()
@click.option(
    "--processes", "-p", default=2, show_default=True, type=AT_LEAST_1, help="Worker processes."
)
@click.option(
    "--threads", "-t", default=8, show_default=True, type=AT_LEAST_1, help="Threads per process."
)
@nice_option
def worker(processes: int, threads: int, nice: int | None) -> None:
    """Run the worker fleet: publish queued bundles to SNS; metrics on RELAY_METRICS_PORT."""
    from relay.supervisor import run_workers

    settings = settings_or_exit()
    try:
        settings.require_topic_arn()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    nice = settings.worker_nice if nice is None else nice
    try:
        code = run_workers(settings, processes, threads, settings.metrics_port, nice=nice)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    sys.exit(code)


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(stream, start=1):
        stripped = line.strip()
        if stripped:
            yield number, stripped


@main.command()
@click.argument("source", type=click.File("rb"), default="-")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@handles_redis_down
def send(source: IO[bytes], quiet: bool) -> None:
    """Enqueue events from SOURCE (a file, or - for stdin): one JSON object per line."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from relay.producer import Producer

    settings = settings_or_exit()
    problems: list[str] = []
    enqueued = dropped = invalid = 0
    with (
        Producer(settings) as producer,
        Progress(
            TextColumn("sending"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TimeElapsedColumn(),
            console=console,
            disable=quiet or not console.is_terminal,
        ) as progress,
    ):
        task = progress.add_task("send", total=None)
        chunk: list[tuple[int, bytes]] = []

        def flush() -> None:
            nonlocal enqueued, dropped, invalid
            try:
                report = producer.send_many([line for _, line in chunk], source="cli")
            except QueueUnavailable as exc:
                raise QueueUnavailable(
                    f"{exc}\n{_send_stopped(chunk, exc.report, enqueued)}",
                    maybe_stored=exc.maybe_stored,
                ) from None
            for outcome in report.outcomes:
                if outcome.status != "enqueued":
                    problems.append(
                        f"line {chunk[outcome.index][0]}: {outcome.status}: {outcome.detail}"
                    )
            enqueued += report.enqueued
            dropped += report.dropped
            invalid += report.invalid
            progress.advance(task, len(chunk))
            chunk.clear()

        for item in _lines(source):
            chunk.append(item)
            if len(chunk) == SEND_CHUNK_EVENTS:
                flush()
        if chunk:
            flush()
    for problem in problems[:20]:
        console.print(problem, highlight=False, markup=False)
    if len(problems) > 20:
        console.print(f"... and {len(problems) - 20} more", highlight=False)
    click.echo(f"enqueued {enqueued}, dropped {dropped} (over the size limit), invalid {invalid}")
    sys.exit(EXIT_OK if not problems else EXIT_PROBLEM)


def _send_stopped(chunk: list[tuple[int, bytes]], report: Any, enqueued_before: int) -> str:
    """What `relay send` stored before Redis failed, and from which line to send again."""
    from relay.producer import UNSENT_DETAIL

    outcomes = report.outcomes if report is not None else []
    unsent = [o for o in outcomes if o.status == "unavailable"]
    first = chunk[unsent[0].index][0] if unsent else chunk[0][0]
    stored = enqueued_before + sum(1 for o in outcomes if o.status == "enqueued")
    maybe = [chunk[o.index][0] for o in unsent if o.detail != UNSENT_DETAIL]
    said = (
        f"relay send stopped at line {first}: the {stored} events enqueued before it are stored, "
        f"the lines from {first} on are not"
    )
    if maybe:
        said += (
            f", except that lines {maybe[0]}-{maybe[-1]} may have been (sent again, they may "
            "arrive twice, under other ids)"
        )
    return said + f". To send the rest: tail -n +{first} FILE | relay send -"


@main.command("check-sns")
@click.option("--publish", is_flag=True, help="Also publish a test message (needs sns:Publish).")
def check_sns(publish: bool) -> None:
    """Stream's "Test SNS": credentials, topic, permissions. Exit 0 if all pass, else 1."""
    settings = settings_or_exit(need_redis=False)
    check = worker_side("check")
    report = check.check_sns(settings, publish=publish)
    click.echo(check.render(report))
    sys.exit(EXIT_OK if report.ok else EXIT_PROBLEM)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handles_redis_down
def stats(as_json: bool) -> None:
    """Queue depth, oldest event age, dead letters, drops, totals."""
    from relay import stats as stats_
    from relay.keys import Keys
    from relay.queue import redis_client
    from relay.store import RelayStore

    settings = settings_or_exit()
    store = RelayStore(
        redis_client(settings.require_redis_url(), settings), Keys(settings.namespace)
    )
    figures = stats_.collect(store)
    figures["recent_drops"] = [dataclasses.asdict(record) for record in store.dropped(10)]
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    table = Table(title=f"sns-relay ({settings.namespace})", show_header=False)
    age = figures["oldest_age_s"]
    table.add_row("events waiting", str(figures["pending_events"]))
    table.add_row("bundles queued", str(figures["queued_bundles"]))
    table.add_row("oldest waiting", "-" if age is None else f"{age:.1f} s")
    table.add_row("dead letters", str(figures["dead_letters"]))
    dead_bundles = figures["dead_bundles"]
    table.add_row(
        "dead bundles (relay bugs)",
        f"{dead_bundles}: see `relay dlq bundles`" if dead_bundles else "0",
    )
    breakers = figures["open_breakers"]
    table.add_row(
        "SNS circuit",
        "closed"
        if not breakers
        else f"open in {len(breakers)} processes: "
        + "; ".join(sorted({b["reason"] for b in breakers.values()})),
    )
    for reason, count in sorted(figures["dropped"].items()):
        table.add_row(f"dropped: {reason}", str(count))
    for name, count in sorted(figures["totals"].items()):
        table.add_row(f"total {name}", str(count))
    Console().print(table)
    if figures["recent_drops"]:
        drops = Table(title="recent drops")
        drops.add_column("event id", overflow="fold")  # ids are copied into other commands whole
        for column in ("type", "reason", "size", "limit", "when"):
            drops.add_column(column)
        for record in figures["recent_drops"]:
            drops.add_row(
                escape(record["event_id"]),
                escape(str(record["event_type"])),
                escape(record["reason"]),
                str(record["size_bytes"]),
                str(record["limit_bytes"]),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["at_s"])),
            )
        Console().print(drops)


def _parse_age(text: str | None) -> float | None:
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        age_s = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        age_s = math.nan
    if not (math.isfinite(age_s) and age_s >= 0):  # nan, inf and negative ages mean nothing here
        raise click.BadParameter(f"{text!r} is not an age like 90s, 15m, 2h or 7d")
    return age_s


@main.group()
def dlq() -> None:
    """Dead letters: events SNS rejected for themselves; and dead bundles, failed by a bug."""


def _dead_letters(settings: Settings) -> Any:
    from relay.dead_letters import DeadLetters
    from relay.keys import Keys
    from relay.queue import redis_client

    return DeadLetters(
        redis_client(settings.require_redis_url(), settings), Keys(settings.namespace)
    )


@dlq.command("list")
@click.option("--type", "event_type", help="Only events of this type (e.g. message.new).")
@click.option("--older-than", help="Only dead letters at least this old (90s, 15m, 2h, 7d).")
@click.option("--limit", default=50, show_default=True, type=AT_LEAST_1)
@click.option("--json", "as_json", is_flag=True)
@handles_redis_down
def dlq_list(event_type: str | None, older_than: str | None, limit: int, as_json: bool) -> None:
    """List dead letters, oldest first."""
    store = _dead_letters(settings_or_exit())
    letters = list(
        store.iter(event_type=event_type, older_than_s=_parse_age(older_than), limit=limit)
    )
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "event_id": dl.event.id,
                        "type": dl.event.type,
                        "code": dl.code,
                        "message": dl.message,
                        "at_s": dl.at_s,
                        "size_bytes": dl.event.size_bytes,
                    }
                    for dl in letters
                ],
                indent=2,
            )
        )
        return
    table = Table(title=f"dead letters ({store.depth()} in all)")
    table.add_column("event id", overflow="fold")  # ids are copied into other commands whole
    for column in ("type", "error", "when"):
        table.add_column(column)
    for dl in letters:
        table.add_row(
            escape(dl.event.id),
            escape(str(dl.event.type)),
            escape(f"{dl.code}: {dl.message[:60]}"),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dl.at_s)),
        )
    Console().print(table)


@dlq.command("show")
@click.argument("event_id")
@handles_redis_down
def dlq_show(event_id: str) -> None:
    """Show one dead letter: the error and the event's body and attributes."""
    letters = _dead_letters(settings_or_exit()).get([event_id])
    if not letters:
        fail(f"no dead letter with id {event_id}", EXIT_PROBLEM)
    dl = letters[0]
    click.echo(
        json.dumps(
            {
                "event_id": dl.event.id,
                "code": dl.code,
                "message": dl.message,
                "at_s": dl.at_s,
                "attributes": dict(dl.event.attributes),
                "size_bytes": dl.event.size_bytes,
                "body": dl.event.body,
            },
            indent=2,
            ensure_ascii=False,
        )
    )


@dlq.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter (filters apply).")
@click.option("--type", "event_type", help="Only events of this type.")
@click.option("--older-than", help="Only dead letters at least this old.")
@click.option(
    "--rate",
    default=100.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Events per second at most (below 1: one event every 1/RATE seconds).",
)
@handles_redis_down
def dlq_replay(
    event_ids: tuple[str, ...],
    replay_all: bool,
    event_type: str | None,
    older_than: str | None,
    rate: float,
) -> None:
    """Send dead letters back through the queue (and out of dead letters)."""
    from relay.keys import Keys
    from relay.queue import BundleWriter

    if bool(event_ids) == replay_all:
        fail("give event ids, or --all", EXIT_USAGE)
    settings = settings_or_exit()
    store = _dead_letters(settings)
    writer = BundleWriter(store.client, Keys(settings.namespace))
    if replay_all:
        letters = list(store.iter(event_type=event_type, older_than_s=_parse_age(older_than)))
    else:
        letters = store.get(list(dict.fromkeys(event_ids)))  # an id given twice is one event
        missing = set(event_ids) - {dl.event.id for dl in letters}
        if missing:
            fail(f"no dead letter with id {', '.join(sorted(missing))}", EXIT_PROBLEM)
    step, period_s = replay_pace(rate)
    replayed = 0
    for start in range(0, len(letters), step):
        began = time.monotonic()
        replayed += store.replay(letters[start : start + step], writer)
        if start + step < len(letters):
            time.sleep(
                max(0.0, period_s - (time.monotonic() - began))
            )  # the rate limit, not a wait for work
    click.echo(f"replayed {replayed} dead letters")
    if replayed < len(letters):
        click.echo(
            f"{len(letters) - replayed} were no longer dead letters when their turn came "
            "(replayed or purged by another command meanwhile) and were left alone"
        )


def _dead_bundles(settings: Settings) -> Any:
    from relay.dead_bundles import DeadBundles
    from relay.keys import Keys
    from relay.queue import redis_client

    return DeadBundles(
        redis_client(settings.require_redis_url(), settings), Keys(settings.namespace)
    )


@dlq.command("bundles")
@click.option("--json", "as_json", is_flag=True)
@handles_redis_down
def dlq_bundles(as_json: bool) -> None:
    """List dead bundles: bundles a relay bug failed, in dramatiq's own dead letters."""
    found = _dead_bundles(settings_or_exit()).list()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "bundle_id": dead.redis_id,
                        "dead_at_s": dead.dead_at_s,
                        "events": len(dead.events),
                        "event_ids": [event.id for event in dead.events],
                        "problem": dead.problem,
                    }
                    for dead in found
                ],
                indent=2,
            )
        )
        return
    table = Table(title=f"dead bundles ({len(found)}; dramatiq deletes each 7 days after)")
    table.add_column("bundle id", overflow="fold")
    for column in ("events", "dead since", "problem"):
        table.add_column(column)
    for dead in found:
        table.add_row(
            escape(dead.redis_id),
            str(len(dead.events)),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dead.dead_at_s)),
            escape(dead.problem or ""),
        )
    Console().print(table)


@dlq.command("requeue-bundles")
@click.argument("bundle_ids", nargs=-1)
@click.option("--all", "requeue_all", is_flag=True, help="Requeue every dead bundle.")
@handles_redis_down
def dlq_requeue_bundles(bundle_ids: tuple[str, ...], requeue_all: bool) -> None:
    """Queue the events of dead bundles again, once the bug that failed them is fixed.

    Exit 1 when a bundle asked for cannot be read as one (the others are requeued).
    """
    from relay.keys import Keys
    from relay.queue import BundleWriter

    if bool(bundle_ids) == requeue_all:
        fail("give bundle ids, or --all", EXIT_USAGE)
    settings = settings_or_exit()
    store = _dead_bundles(settings)
    found = store.list()
    if not requeue_all:
        by_id = {dead.redis_id: dead for dead in found}
        missing = sorted(set(bundle_ids) - by_id.keys())
        if missing:
            fail(f"no dead bundle with id {', '.join(missing)}", EXIT_PROBLEM)
        found = [by_id[bundle_id] for bundle_id in dict.fromkeys(bundle_ids)]
    writer = BundleWriter(store.client, Keys(settings.namespace))
    requeued = events = gone = 0
    unreadable = [dead for dead in found if dead.problem is not None]
    for dead in found:
        if dead.problem is None:
            if store.requeue(dead, writer):
                requeued += 1
                events += len(dead.events)
            else:
                gone += 1
    click.echo(f"requeued {requeued} dead bundles ({events} events)")
    if gone:
        click.echo(
            f"{gone} were no longer dead bundles when their turn came (requeued by another "
            "command, or deleted by dramatiq) and were left alone"
        )
    for dead in unreadable:
        click.echo(f"left alone {dead.redis_id}: {dead.problem}")
    if unreadable:
        sys.exit(EXIT_PROBLEM)


REPLAY_MAX_PER_WRITE = 1_000
"""Dead letters replayed by one Redis write, however high the rate."""


def replay_pace(rate_per_s: float) -> tuple[int, float]:
    """(dead letters per step, seconds per step) for at most `rate_per_s` events a second:
    a second's worth at a time (REPLAY_MAX_PER_WRITE at most), or one every 1/rate seconds."""
    step = max(1, int(min(rate_per_s, REPLAY_MAX_PER_WRITE)))
    return step, step / rate_per_s


@dlq.command("purge")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "purge_all", is_flag=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handles_redis_down
def dlq_purge(event_ids: tuple[str, ...], purge_all: bool, yes: bool) -> None:
    """Delete dead letters for good."""
    if bool(event_ids) == purge_all:
        fail("give event ids, or --all", EXIT_USAGE)
    store = _dead_letters(settings_or_exit())
    if not purge_all:
        # Not through `get`: a record it cannot read is one purge must still find.
        missing = set(event_ids) - store.existing(list(event_ids))
        if missing:
            fail(f"no dead letter with id {', '.join(sorted(missing))}", EXIT_PROBLEM)
    if purge_all and not yes:
        click.confirm(f"delete all {store.depth()} dead letters?", abort=True)
    removed = store.purge(None if purge_all else list(event_ids))
    click.echo(f"purged {removed} dead letters")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=PORT)
@click.option(
    "--insecure-no-signature",
    is_flag=True,
    help="Accept unsigned requests when RELAY_WEBHOOK_SECRET is unset (local use only).",
)
def ingest(host: str, port: int, insecure_no_signature: bool) -> None:
    """The HTTP ingest: POST /events (signed webhooks), /healthz, /readyz, /metrics."""
    from relay.ingest.server import serve

    settings = settings_or_exit()
    try:
        serve(
            settings,
            host,
            port,
            insecure_no_signature=insecure_no_signature,
            log_level=settings.log_level.lower(),
        )
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


@main.command("local-sns")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=None, type=PORT, help="Default: the local SNS default port.")
@click.option("--record-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--max-recorded-messages",
    type=click.IntRange(min=1),
    default=None,
    help="Keep only the newest N accepted messages in memory (default: all).",
)
def local_sns(
    host: str, port: int | None, record_file: Path | None, max_recorded_messages: int | None
) -> None:
    """A local SNS endpoint that enforces SNS's real limits, for development and the demo."""
    from relay import local_sns as local

    kwargs: dict[str, Any] = {
        "host": host,
        "record_file": record_file,
        "max_recorded_messages": max_recorded_messages,
    }
    if port is not None:
        kwargs["port"] = port
    local.serve(**kwargs)


@main.command()
@click.option("--processes", "-p", default=2, show_default=True, type=AT_LEAST_1)
@click.option("--threads", "-t", default=8, show_default=True, type=AT_LEAST_1)
@click.option("--host", default="127.0.0.1", show_default=True, help="The ingest's address.")
@click.option("--port", default=8080, show_default=True, type=PORT, help="The ingest's port.")
@click.option(
    "--insecure-no-signature",
    is_flag=True,
    help="Let the ingest accept unsigned requests when RELAY_WEBHOOK_SECRET is unset.",
)
@nice_option
def up(
    processes: int,
    threads: int,
    host: str,
    port: int,
    insecure_no_signature: bool,
    nice: int | None,
) -> None:
    """Ingest and workers in one supervisor (with an embedded durable Valkey when
    RELAY_REDIS_URL is unset)."""
    from relay.up import run_up

    settings = settings_or_exit(embedded_ok=True)
    try:
        settings.require_topic_arn()
        if settings.webhook_secret is None and not insecure_no_signature:
            raise ConfigError(
                "RELAY_WEBHOOK_SECRET is not set: the ingest refuses unsigned webhooks "
                "(pass --insecure-no-signature for local use)"
            )
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        code = run_up(
            settings,
            processes,
            threads,
            ingest_host=host,
            ingest_port=port,
            insecure_no_signature=insecure_no_signature,
            worker_nice=settings.worker_nice if nice is None else nice,
        )
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    sys.exit(code)


@main.command()
@click.option(
    "--events", default=5_000, show_default=True, type=AT_LEAST_1, help="How many events to send."
)
@click.option("--processes", "-p", default=2, show_default=True, type=AT_LEAST_1)
@click.option("--threads", "-t", default=8, show_default=True, type=AT_LEAST_1)
def demo(events: int, processes: int, threads: int) -> None:
    """Zero-config demo: embedded Valkey, local SNS, workers, a spike of Stream events."""
    from relay.demo import run_demo

    sys.exit(run_demo(events=events, processes=processes, threads=threads))


if __name__ == "__main__":
    main()
