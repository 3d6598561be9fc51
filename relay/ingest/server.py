"""Running the ingest: uvicorn with uvloop and httptools, one process, graceful on SIGTERM.

The protocol is uvicorn's httptools one with each answer sent in one write
(relay.ingest.protocol).

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
from relay.ingest.protocol import OneWriteHttpToolsProtocol
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
        http=OneWriteHttpToolsProtocol,  # httptools, each answer in one write
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
    listeners = bind(host, port, config.backlog)  # uvicorn's default backlog
    # uvicorn says where it runs only when it binds the sockets itself.
    for listener in listeners:
        log.info("ingest listening on %s/events", _url(listener))
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
        server.run(sockets=listeners)
    finally:
        for listener in listeners:
            listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise SystemExit(1)


def bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address `host` names (all interfaces for ''), as uvicorn's
    own bind would make them; ConfigError naming the address when one cannot be had.

    Bound here rather than by uvicorn, which logs the error and exits 3 (the relay's code for
    Redis unreachable) when the port is taken.
    """
    listeners: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _name, address in dict.fromkeys(found):
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio does: '::' must not take IPv4's port
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(listeners) > 1:  # one port for every address
                address = (address[0], listeners[0].getsockname()[1], *address[2:])
            listener.bind(address)
            listener.listen(backlog)
    except OSError as exc:  # in use, an address this host does not have, a name that does
        for listener in listeners:  # not resolve
            listener.close()
        raise ConfigError(
            f"the ingest cannot listen on {host}:{port} (--host, --port): {exc.strerror or exc}"
        ) from None
    return listeners


def _url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return (
        f"http://[{host}]:{port}" if listener.family == socket.AF_INET6 else f"http://{host}:{port}"
    )


def _absorb(signum: int, frame: FrameType | None) -> None:
    """Ignore the signal uvicorn re-raises after its graceful shutdown."""
