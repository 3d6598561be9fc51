"""Fixtures of the AWS-side tests: an environment nothing leaks into, and moto in-process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RELAY_* or AWS_* variables, no config files, no instance metadata: nothing leaks in."""
    for name in list(os.environ):
        if name.startswith(("RELAY_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def aws() -> Iterator[None]:
    """moto in-process, leaving the environment's credentials alone (the tests set them)."""
    with mock_aws(config={"core": {"mock_credentials": False}}):
        yield
