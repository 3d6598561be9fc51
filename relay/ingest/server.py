"""Running the ingest: uvicorn with uvloop and httptools, one process, graceful on SIGTERM.

On SIGTERM or SIGINT uvicorn stops accepting connections, lets in-flight requests finish (their
events stored and answered), closes idle keep-alive connections, then the app's lifespan writes
whatever is still pending; `serve` then returns, so the process exits 0.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
from types import FrameType

import uvicorn

from relay import logs
from relay.errors import ConfigError
from relay.ingest.app import create_app
from relay.ingest.service import DEFAULT_TUNING, Tuning
from relay.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
GRACEFUL_SHUTDOWN_S = 10
"""In-flight requests get this long after SIGTERM; Stream itself gives up on one after 6 s."""
KEEP_ALIVE_S = 75
"""Idle keep-alive connections are kept this long, so a webhook sender rarely reconnects."""


def serve(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    insecure_no_signature: bool = False,
    log_level: str = "info",
    tuning: Tuning = DEFAULT_TUNING,
) -> None:
    """Serve the ingest in the foreground until SIGTERM or SIGINT, then return normally.

    Raises ConfigError before serving anything: no Redis URL; no webhook secret without
    `insecure_no_signature`; an address that cannot be bound (in use, not this host's).
    """
    # The relay's own lines and uvicorn's go through the root handler, console or JSON as
    # RELAY_LOG_FORMAT says (uvicorn's own logging config would print plain text beside it).
    logs.configure(log_level, settings.log_format)
    app = create_app(settings, insecure_no_signature=insecure_no_signature, tuning=tuning)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,  # a log line per request would cost more than storing the event
        server_header=False,
        proxy_headers=False,  # nothing here reads the client address; skip a layer per request
        log_level=log_level.lower(),
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    listener = bind(host, port)
    # uvicorn says where it runs only when it binds the socket itself.
    log.info("ingest listening on http://%s:%d/events", host, listener.getsockname()[1])
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down, which would end the
    # process by SIGTERM (status 143) instead of exit 0; a handler in place absorbs the re-raise.
    in_main = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _absorb) for sig in handled} if in_main else {}
    # Everything made so far (modules, the app) lives as long as the process: frozen, a full
    # collection no longer walks it. Measured under a wrk flood: unfrozen, full collections of
    # 20-30 ms every few seconds stalled the answers in flight past the 20 ms p99 target; frozen,
    # they take under a millisecond.
    gc.freeze()
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise SystemExit(1)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; ConfigError naming the address when it cannot be had.

    Bound here rather than by uvicorn, which logs the error and exits 3 (the relay's code for
    Redis unreachable) when the port is taken.
    """
    try:
        family, _type, _proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(address, family=family)
    except OSError as exc:  # in use, an address this host does not have, a name that resolves
        raise ConfigError(
            f"the ingest cannot listen on {host}:{port} (--host, --port): {exc.strerror or exc}"
        ) from None


def _absorb(signum: int, frame: FrameType | None) -> None:
    """Ignore the signal uvicorn re-raises after its graceful shutdown."""
