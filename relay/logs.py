"""Logging: structlog in front of the standard library, one line per event, console or JSON.

Every process of the relay (CLI, workers, ingest) calls `configure` once. Libraries that log
secrets at DEBUG (botocore logs AssumeRole requests and responses, credentials included) are
held at INFO or above whatever the level asked for.
"""

from __future__ import annotations

import logging
import sys

import structlog

SECRET_LOGGING_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer")


def configure(level: str = "INFO", fmt: str = "console") -> None:
    """Route structlog and stdlib logging to stderr, as `console` lines or `json` objects."""
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # Tracebacks are plain text, never with the frames' local variables: structlog's default
    # (rich) prints them, and botocore's AssumeRole frames hold the external id and credentials.
    rendering: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in SECRET_LOGGING_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
