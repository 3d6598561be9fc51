"""The local SNS as an ASGI app: SNS query actions on any path, JSON control under `/_local/`.

A Starlette app like the ingest for `/_local/`, but the SNS actions skip it: its middleware,
router, Request and Response cost about 20 µs a request, half the rest of a Publish. Measured
as the server process's CPU time on the benchmark's 2-core machine, over keep-alive requests of
Stream events: a 10-entry PublishBatch (47 KB of form body) went from about 0.95 to 0.54 ms and
a Publish from about 250 to 165 µs, of which uvicorn itself takes about 130 and 100 µs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import asdict
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from relay.limits import SNS_MAX_BATCH_ENTRIES, batch_entry_id_error
from relay.local_sns.faults import Fault
from relay.local_sns.protocol import (
    DEFAULT_REGION,
    Params,
    SnsError,
    error_response,
    escape,
    group,
    map_xml,
    parse_params,
    region_of,
    response,
)
from relay.local_sns.rules import INVALID_PARAMETER, Draft, Message, check_message, read_message
from relay.local_sns.state import LocalSnsState, Topic

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Action = Callable[[Params, str, Fault | None], str | None]

_SNS_METHODS = frozenset({"GET", "HEAD", "POST"})
"""The methods of the SNS route `/{path:path}` (Starlette adds HEAD to a GET route)."""
MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Far above any valid request (10 entries within 1 MiB); a bound on memory, not an SNS rule."""

logger = logging.getLogger(__name__)


class LocalSnsApp:
    """The ASGI callable; `state` holds everything it has seen."""

    def __init__(self, state: LocalSnsState | None = None) -> None:
        self.state = state if state is not None else LocalSnsState()
        self.started = threading.Event()
        """Set when the server has started the app (ASGI lifespan startup)."""
        self._actions: dict[str, Action] = {
            "CreateTopic": self._create_topic,
            "GetTopicAttributes": self._get_topic_attributes,
            "SetTopicAttributes": self._set_topic_attributes,
            "ListTopics": self._list_topics,
            "DeleteTopic": self._delete_topic,
            "Publish": self._publish,
            "PublishBatch": self._publish_batch,
        }
        bad_request = {error: _bad_control_request for error in (ValueError, TypeError, SnsError)}
        self._app = Starlette(
            routes=[
                Route("/_local/health", self._health),
                Route("/_local/messages", self._messages),
                Route("/_local/stats", self._stats),
                Route("/_local/reset", self._reset, methods=["POST"]),
                Route("/_local/topics", self._topics, methods=["POST"]),
                Route("/_local/faults", self._faults, methods=["POST"]),
                Route("/_local/{rest:path}", self._no_endpoint),
                # Also what a POST to a `/_local/` path that only has GET comes to.
                Route("/{path:path}", _AsgiEndpoint(self._sns), methods=["GET", "POST"]),
            ],
            exception_handlers=bad_request,
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # SNS actions skip Starlette's middleware and router (about 20 µs a request), since
        # only `/{path:path}` can match a path outside `/_local/`.
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and scope["method"] in _SNS_METHODS
            and path.startswith("/")
            and not path.startswith("/_local/")
            and not scope.get("root_path")
        ):
            await self._sns(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self.started.set()
        yield

    # SNS actions -------------------------------------------------------------------------------

    async def _sns(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = self.state.new_id()
        action = "?"
        try:
            params = parse_params(scope["query_string"], await _read_body(receive))
            action = params.get("Action", "?")
            self.state.count_request(action)
            handler = self._actions.get(action)
            if handler is None:
                raise SnsError(
                    "InvalidAction", f"The action {action!r} is not valid for this endpoint."
                )
            fault = self.state.take_fault(action)
            if fault is not None:
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                if (error := fault.error()) is not None:
                    raise error
            region = region_of(scope["headers"])
            body, status = response(action, request_id, handler(params, region, fault)), 200
        except SnsError as error:
            self.state.count_rejected(error.code)
            body, status = error_response(error, request_id), error.status
        except Exception as exc:  # a bug here: logged loudly, answered as SNS would answer one
            logger.exception("local SNS failed on %s", action)
            bug = SnsError("InternalError", f"local SNS bug: {exc!r}", 500)
            body, status = error_response(bug, request_id), 500
        # The headers, in order, of Starlette's Response(body, status, {"x-amzn-requestid": ...},
        # media_type="text/xml"), which answered before.
        headers = [
            (b"x-amzn-requestid", request_id.encode("latin-1")),
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"content-type", b"text/xml; charset=utf-8"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _create_topic(self, params: Params, region: str, _: Fault | None) -> str:
        attributes = {
            entry.get("key", ""): entry.get("value", "")
            for entry in group(params, "Attributes.entry")
        }
        topic = self.state.create_topic(params.get("Name", ""), region, attributes)
        return f"<TopicArn>{escape(topic.arn)}</TopicArn>"

    def _get_topic_attributes(self, params: Params, _: str, __: Fault | None) -> str:
        topic = self.state.topic(params.get("TopicArn", ""))
        return f"<Attributes>{map_xml(topic.describe())}</Attributes>"

    def _set_topic_attributes(self, params: Params, _: str, __: Fault | None) -> None:
        arn, name = params.get("TopicArn", ""), params.get("AttributeName", "")
        self.state.set_topic_attribute(arn, name, params.get("AttributeValue", ""))

    def _list_topics(self, _: Params, region: str, __: Fault | None) -> str:
        arns = self.state.topic_arns(region)
        members = "".join(f"<member><TopicArn>{escape(arn)}</TopicArn></member>" for arn in arns)
        return f"<Topics>{members}</Topics>"

    def _delete_topic(self, params: Params, _: str, __: Fault | None) -> None:
        self.state.delete_topic(params.get("TopicArn", ""))

    def _publish(self, params: Params, _: str, __: Fault | None) -> str:
        if params.get("PhoneNumber") is not None:
            raise SnsError(INVALID_PARAMETER, "Invalid parameter: the local SNS has no SMS")
        arn = params.get("TopicArn") or params.get("TargetArn")
        if not arn:
            raise SnsError(
                INVALID_PARAMETER,
                "Invalid parameter: TopicArn or TargetArn Reason: no value for required parameter",
            )
        topic = self.state.topic(arn)
        message = _check(topic, read_message(params))
        [(message_id, sequence)] = self.state.record(topic, [message])
        return f"<MessageId>{message_id}</MessageId>{_sequence_xml(sequence)}"

    def _publish_batch(self, params: Params, _: str, fault: Fault | None) -> str:
        topic = self.state.topic(params.get("TopicArn", ""))
        entries = group(params, "PublishBatchRequestEntries.member")
        if not entries:
            raise SnsError("EmptyBatchRequest", "The batch request doesn't contain any entries.")
        if len(entries) > SNS_MAX_BATCH_ENTRIES:
            raise SnsError(
                "TooManyEntriesInBatchRequest",
                f"The batch request contains more entries than permissible: {len(entries)} > "
                f"{SNS_MAX_BATCH_ENTRIES}.",
            )
        ids = [entry.get("Id", "") for entry in entries]
        for entry_id in ids:
            if (reason := batch_entry_id_error(entry_id)) is not None:
                raise SnsError("InvalidBatchEntryId", f"Invalid batch entry id: {reason}.")
        if len(set(ids)) != len(ids):
            raise SnsError(
                "BatchEntryIdsNotDistinct",
                "Two or more batch entries in the request have the same Id.",
            )
        # The aggregate covers every entry, so one entry over the limit fails the whole request
        # here: a per-entry size failure cannot happen in a batch.
        drafts = [read_message(entry) for entry in entries]
        total_bytes = sum(draft.size_bytes for draft in drafts)
        if total_bytes > topic.max_message_bytes:
            raise SnsError(
                "BatchRequestTooLong",
                f"The length of all the messages put together is more than the limit: "
                f"{total_bytes} bytes with attributes, limit {topic.max_message_bytes} bytes.",
            )
        accepted: list[tuple[str, Message]] = []
        failed: list[str] = []
        for index, (entry_id, draft) in enumerate(zip(ids, drafts, strict=True)):
            # An entry_failure fault fails entries 1, 3, 5...: a lone entry fails, a batch partly.
            if fault is not None and fault.mode == "entry_failure" and index % 2 == 0:
                error, sender_fault = (
                    SnsError(fault.code, "Injected by the local SNS"),
                    fault.sender_fault,
                )
            else:
                try:
                    accepted.append((entry_id, _check(topic, draft)))
                    continue
                except SnsError as rejected:
                    error, sender_fault = rejected, True
            self.state.count_rejected(error.code)
            failed.append(
                f"<member><Id>{entry_id}</Id><Code>{escape(error.code)}</Code>"
                f"<Message>{escape(error.message)}</Message>"
                f"<SenderFault>{str(sender_fault).lower()}</SenderFault></member>"
            )
        results = self.state.record(topic, [message for _, message in accepted])
        successful = "".join(
            f"<member><Id>{entry_id}</Id><MessageId>{message_id}</MessageId>"
            f"{_sequence_xml(sequence)}</member>"
            for (entry_id, _), (message_id, sequence) in zip(accepted, results, strict=True)
        )
        return f"<Successful>{successful}</Successful><Failed>{''.join(failed)}</Failed>"

    # Control endpoints (JSON) ----------------------------------------------------------------

    async def _health(self, _: Request) -> Response:
        return _json({"ok": True})

    async def _messages(self, request: Request) -> Response:
        """?offset=N (a sequence number), &limit=M, &topic_arn=ARN."""
        query = request.query_params
        limit = query.get("limit")
        return _json(
            self.state.page(
                int(query.get("offset", "0")),
                None if limit is None else int(limit),
                query.get("topic_arn"),
            )
        )

    async def _stats(self, _: Request) -> Response:
        return _json(self.state.stats())

    async def _reset(self, request: Request) -> Response:
        """{"topics": true} forgets the topics too."""
        spec = await _read_json(request)
        self.state.reset(topics=bool(spec.get("topics", False)))
        return _json({"ok": True})

    async def _topics(self, request: Request) -> Response:
        """{"name", "region", "attributes"}: CreateTopic for callers without an SNS client."""
        spec = await _read_json(request)
        attributes = {str(k): str(v) for k, v in dict(spec.get("attributes", {})).items()}
        region = str(spec.get("region", DEFAULT_REGION))
        topic = self.state.create_topic(str(spec.get("name", "")), region, attributes)
        return _json({"ok": True, "topic_arn": topic.arn})

    async def _faults(self, request: Request) -> Response:
        """The JSON of `faults.fault_spec`."""
        fault = self.state.set_fault(await _read_json(request))
        return _json({"ok": True, "fault": asdict(fault)})

    async def _no_endpoint(self, request: Request) -> Response:
        return _json({"error": f"no control endpoint {request.url.path}"}, 404)


class _AsgiEndpoint:
    """An ASGI callable that Starlette routes to as it is, where a method would get a Request."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def _check(topic: Topic, draft: Draft) -> Message:
    return check_message(
        draft,
        limit_bytes=topic.max_message_bytes,
        fifo=topic.fifo,
        content_dedup=topic.content_dedup,
    )


def _sequence_xml(sequence: str | None) -> str:
    return "" if sequence is None else f"<SequenceNumber>{sequence}</SequenceNumber>"


async def _read_body(receive: Receive) -> bytes:
    """The request body, as Starlette's `Request.stream` reads it; raises ClientDisconnect."""
    chunks: list[bytes] = []
    size = 0
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            more_body = message.get("more_body", False)
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REQUEST_BYTES:
                raise SnsError(
                    "RequestEntityTooLarge", f"request body over {MAX_REQUEST_BYTES} bytes", 413
                )
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_json(request: Request) -> dict[str, Any]:
    body = await _read_body(request.receive)
    document = orjson.loads(body) if body.strip() else {}
    if not isinstance(document, dict):
        raise ValueError("the request body must be a JSON object")
    return document


def _json(payload: Mapping[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


async def _bad_control_request(_: Request, exc: Exception) -> Response:
    # Only control endpoints get here: the SNS endpoint answers its own errors in XML.
    return _json({"error": str(exc)}, 400)
