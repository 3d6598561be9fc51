"""Tests of relay.logs: what a logged exception shows, in both formats."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from relay import logs

SECRET = "leak-check-external-id-0c7d"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def fail_with_a_secret_in_a_local() -> None:
    external_id = SECRET  # as botocore's AssumeRole frames hold it
    raise RuntimeError(f"refresh failed ({len(external_id)} characters)")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_logged_traceback_never_shows_the_frames_local_variables(
    fmt: str, capfd: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    """An exception logged with its traceback names the error and the code, not the locals."""
    logs.configure("INFO", fmt)
    try:
        fail_with_a_secret_in_a_local()
    except RuntimeError:
        logging.getLogger("botocore.credentials").exception("Refreshing credentials failed")

    err = capfd.readouterr().err
    assert "Refreshing credentials failed" in err
    assert "RuntimeError: refresh failed (27 characters)" in err
    assert "fail_with_a_secret_in_a_local" in err
    assert SECRET not in err
