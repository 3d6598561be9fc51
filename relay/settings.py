"""Configuration: one typed object built once from the environment (and `.env`) and passed down.

Every field maps to a `RELAY_*` variable of DESIGN's contract. Secrets are SecretStr, so they
never print in reprs, logs or errors.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.connection import parse_url

from relay import limits
from relay.errors import ConfigError

ENV_PREFIX = "RELAY_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_NICE = 19

DEFAULT_WORKER_NICE = 0
"""Workers run at normal priority unless told otherwise (`--nice`, RELAY_WORKER_NICE), `relay up`
included. Measured on 2 cores with the ingest on the same machine: at nice 10 the workers fell
behind a steady flow at half the flood rate (enqueue to publish p50 1.5-1.8 s); at 5 they kept
up with it (p50 18-27 ms, as at 0) but `relay demo`'s spike waited for them (POST to SNS p50
1.3-1.8 s against 17 ms at 0) and was posted no faster. A lower priority pays only where
producers must win every contest for the CPU: with 1M events draining, a `send_many` producer on
the same 2 cores ran 55.7 % slower with the workers at 0, and 1.4 % and 18.3 % slower at 19,
while the drain lost 5 % (README, Performance)."""
DEFAULT_WORKER_IDLE_POLL_MS = 100
"""How long an idle worker process waits at most between looks at the queue, and so how late an
event that ends a quiet spell can be picked up. dramatiq's consumer backs off from 5 ms, doubling,
to its worker timeout, 1,000 ms: an idle relay took up to 0.6 s to start publishing, and that was
most of the benchmark's latency p99. At 100 ms an idle fleet costs about 10 ms of CPU a second
more (`python -m benchmarks.run --idle`; figures in benchmarks/README.md)."""
MIN_WORKER_IDLE_POLL_MS = 10
MAX_WORKER_IDLE_POLL_MS = 10_000
_TOPIC_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:sns:([a-z0-9-]+):([0-9]{12}):([A-Za-z0-9_-]{1,256}(\.fifo)?)$"
)
_REGION_RE = re.compile(r"^[a-z]{2,4}(-[a-z]+)+-[0-9]{1,2}$")
"""us-east-1, us-gov-west-1, cn-north-1, eusc-de-east-1: what botocore puts in a hostname."""
_LOG_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
"""Names the standard library takes for these levels too."""


class Settings(BaseSettings):
    """All of the relay's settings. Build with `Settings.load()` for errors that name variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
        # An empty variable (common in manifests and compose files) means unset, never "".
        env_ignore_empty=True,
    )

    redis_url: str | None = Field(default=None, repr=False)  # may hold a password
    data_dir: Path = Path(".relay")
    namespace: str = "sns-relay"

    sns_topic_arn: str | None = None
    sns_key: SecretStr | None = None
    sns_secret: SecretStr | None = None
    sns_role_arn: str | None = None
    sns_external_id: SecretStr | None = None
    sns_region: str | None = None
    sns_endpoint_url: str | None = None
    sns_client: str = "lean"
    """`lean` (PublishBatch encoded once, signed with botocore's SigV4 and sent by the relay: ~6x
    less CPU, proven byte-identical to botocore) or `boto3` (botocore's client for every call)."""

    max_message_bytes: int | None = None
    """A cap below the topic's own limit; unset: the topic's `MaximumMessageSize` (or 262,144)."""
    webhook_secret: SecretStr | None = None
    """HMAC key(s) for `X-Signature`; several, comma-separated, during a rotation."""
    # Each at least 1: a TTL of 0 would fail the store script after its writes (Redis refuses
    # `SET ... EX 0`), answering 503 for events it had stored.
    webhook_dedup_ttl_s: int = Field(default=3_600, ge=1)
    ingest_max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    ingest_max_backlog_events: int = Field(default=1_000_000, ge=1)
    """Above this many events waiting, ingest answers 503 with Retry-After, storing nothing."""
    metrics_port: int = Field(default=9191, ge=1, le=65_535)
    metrics_host: str = "127.0.0.1"
    """Where `relay worker` serves /metrics; 0.0.0.0 in a container, so Prometheus reaches it."""

    log_level: str = "INFO"
    log_format: str = "console"
    """`console` (one readable line per event) or `json` (one object per line, for collectors)."""

    redis_connect_timeout_s: float = Field(default=1.0, gt=0)
    redis_timeout_s: float = Field(default=2.0, gt=0)

    worker_nice: int = Field(default=DEFAULT_WORKER_NICE, ge=0, le=MAX_NICE)
    """CPU niceness of the worker processes `relay worker` and `relay up` start."""
    worker_idle_poll_ms: int = Field(
        default=DEFAULT_WORKER_IDLE_POLL_MS, ge=MIN_WORKER_IDLE_POLL_MS, le=MAX_WORKER_IDLE_POLL_MS
    )
    """The longest an idle worker process waits between looks at the queue."""

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if value:
            try:
                parse_url(value)  # type: ignore[no-untyped-call]
            except ValueError:
                # Not the parser's words: they can quote parts of the URL, a password among them.
                raise ValueError(
                    "is not a URL redis-py can read (host, port or database)"
                ) from None
        return value or None

    @field_validator("sns_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            raise ValueError("is not a URL (its port is not a number?)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("sns_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value and not _REGION_RE.fullmatch(value):
            raise ValueError("must be an AWS region name like us-east-1")
        return value or None

    @field_validator("sns_topic_arn")
    @classmethod
    def _topic_arn(cls, value: str | None) -> str | None:
        if value and not _TOPIC_ARN_RE.fullmatch(value):
            raise ValueError(
                "must be an SNS topic ARN like arn:aws:sns:us-east-1:123456789012:my-topic"
            )
        return value or None

    @field_validator("max_message_bytes")
    @classmethod
    def _max_bytes(cls, value: int | None) -> int | None:
        return None if value is None else limits.validate_max_message_bytes(value)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = _LOG_LEVEL_ALIASES.get(value.upper(), value.upper())
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("console", "json"):
            raise ValueError("must be 'console' or 'json'")
        return value

    @field_validator("sns_client")
    @classmethod
    def _client_kind(cls, value: str) -> str:
        if value not in ("boto3", "lean"):
            raise ValueError("must be 'boto3' or 'lean'")
        return value

    @field_serializer("redis_url")
    def _without_password(self, url: str | None) -> str | None:
        """A dump shows where Redis is, never the password in the URL."""
        if not url:
            return url
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        """A variable of spaces only counts as unset, as an empty one does (env_ignore_empty):
        a manifest's `VALUE: " "` is as much a slip as `VALUE: ""`."""
        if isinstance(data, dict):
            return {
                name: value
                for name, value in data.items()
                if not (isinstance(value, str) and value and value.isspace())
            }
        return data

    @model_validator(mode="after")
    def _key_pair(self) -> Settings:
        if (self.sns_key is None) != (self.sns_secret is None):
            raise ValueError(
                "RELAY_SNS_KEY and RELAY_SNS_SECRET must be set together (or neither, to use "
                "the AWS default credential chain)"
            )
        if self.sns_external_id is not None and self.sns_role_arn is None:
            raise ValueError("RELAY_SNS_EXTERNAL_ID needs RELAY_SNS_ROLE_ARN")
        return self

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Build the settings, turning validation errors into a ConfigError naming each variable."""
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            message = _describe(exc)
        # Raised outside the except block so the ValidationError, whose text holds the raw
        # inputs (secrets included), is not kept as this error's __context__.
        raise ConfigError(message)

    @property
    def topic_region(self) -> str | None:
        """The region the topic lives in: `RELAY_SNS_REGION`, else the ARN's region."""
        if self.sns_region:
            return self.sns_region
        match = _TOPIC_ARN_RE.fullmatch(self.sns_topic_arn or "")
        return match.group(1) if match else None

    def require_topic_arn(self) -> str:
        """The topic ARN, or ConfigError when `RELAY_SNS_TOPIC_ARN` is unset."""
        if not self.sns_topic_arn:
            raise ConfigError(
                f"{ENV_PREFIX}SNS_TOPIC_ARN is not set: which SNS topic to publish to"
            )
        return self.sns_topic_arn

    def require_redis_url(self) -> str:
        """The Redis URL, or ConfigError when `RELAY_REDIS_URL` is unset."""
        if not self.redis_url:
            raise ConfigError(
                f"{ENV_PREFIX}REDIS_URL is not set (only `relay up` and `relay demo` start an "
                "embedded Valkey)"
            )
        return self.redis_url


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        variable = f"{ENV_PREFIX}{loc[0].upper()}" if loc else "settings"
        # pydantic's message never includes the input when `input` is dropped here, so secrets
        # given as bad values never reach the error text.
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{variable}: {message}" if loc else message)
    return "invalid configuration: " + "; ".join(lines)
