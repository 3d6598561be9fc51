"""The ingest as a Starlette app: `POST /events`, `GET /healthz`, `GET /readyz`, `GET /metrics`.

`create_app` checks the configuration at once (no secret, no Redis URL: ConfigError) but
touches Redis only from its lifespan on, so the server starts, and answers 503 honestly, while
Redis is still coming up. `POST /events` is also a route, but requests for it are handed to its
endpoint before Starlette's middleware and router: on the hot path they cost a fifth of the
time per request, and the endpoint answers every error itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Lifespan, Receive, Scope, Send

from relay.errors import QueueUnavailable
from relay.ingest.events import UNAVAILABLE_RETRY_AFTER_S, EventsEndpoint
from relay.ingest.service import DEFAULT_TUNING, IngestService, Tuning
from relay.settings import Settings

EVENTS_PATH = "/events"


class IngestApp(Starlette):
    """Starlette with a fast path: `POST /events` goes straight to its endpoint."""

    def __init__(
        self, events: EventsEndpoint, routes: Sequence[BaseRoute], lifespan: Lifespan[Any]
    ) -> None:
        super().__init__(
            routes=[Route(EVENTS_PATH, events, methods=["POST"]), *routes], lifespan=lifespan
        )
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == EVENTS_PATH and scope["method"] == "POST":
            await self.events(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    insecure_no_signature: bool = False,
    registry: CollectorRegistry = REGISTRY,
    tuning: Tuning = DEFAULT_TUNING,
) -> IngestApp:
    """The ingest app. Raises ConfigError when `RELAY_REDIS_URL` is unset, or when
    `RELAY_WEBHOOK_SECRET` is and `insecure_no_signature` was not asked for.

    `registry` is what `/metrics` exposes; `app.state.service` is the IngestService.
    """
    service = IngestService(settings, insecure_no_signature=insecure_no_signature, tuning=tuning)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            # Runs after the server has answered its last request: store anything still pending.
            await service.close()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        view = service.view
        if view is None:
            return _not_ready("starting")
        try:
            state = await view.refresh()
        except QueueUnavailable as exc:
            return _not_ready(str(exc))
        if view.over_bound(state):
            return _not_ready(
                f"backlog of {state.pending_events} events is over "
                f"{settings.ingest_max_backlog_events}"
            )
        return JSONResponse({"status": "ready", "pending_events": state.pending_events})

    async def metrics_(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app = IngestApp(
        EventsEndpoint(service),
        [
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_, methods=["GET"]),
        ],
        lifespan,
    )
    app.state.service = service
    return app


def _not_ready(reason: str) -> Response:
    return JSONResponse(
        {"status": "not ready", "reason": reason},
        status_code=503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )
