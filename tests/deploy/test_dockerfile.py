"""The Dockerfile and .dockerignore: hadolint passes, the image runs `relay` as a non-root user,
and the build context holds what `pip install` needs and none of the secrets or local state.

No Docker engine here, so the image itself is never built: the tests check the instructions,
the context the engine would send, and that those files make the installable package.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy import REPO_ROOT, require_tool

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
BASE_IMAGE = "python:3.11-slim"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash-separated paths (Go's Match, plus **)."""
    pattern = pattern.strip("/")
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += ".*"
            index += 2
        elif pattern[index] == "*":
            out += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += "[^/]"
            index += 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return re.compile(out)


def in_build_context(path: str) -> bool:
    """Whether Docker sends `path` (relative to the root) to the engine, per .dockerignore.

    As Docker does: the last pattern matching the path or one of its parent directories wins,
    and `!` patterns re-include.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    included = True
    for pattern in ignore_patterns():
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    """hadolint (every rule, info level and up) passes on the Dockerfile."""
    result = subprocess.run(
        [require_tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_python_slim_running_relay_as_a_non_root_user() -> None:
    """One stage from python:3.11-slim; a numeric non-root USER; `relay` as the entry point."""
    steps = instructions()
    assert [arguments for keyword, arguments in steps if keyword == "FROM"] == [BASE_IMAGE]
    (user,) = [arguments for keyword, arguments in steps if keyword == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit(), user
    assert int(uid) != 0, user
    # USER comes after every RUN, so nothing after it runs as root
    keywords = [keyword for keyword, _ in steps]
    assert keywords.index("USER") > max(i for i, keyword in enumerate(keywords) if keyword == "RUN")
    (entrypoint,) = [arguments for keyword, arguments in steps if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["relay"]
    (command,) = [arguments for keyword, arguments in steps if keyword == "CMD"]
    assert json.loads(command) == ["worker"]


def test_the_image_serves_metrics_on_all_interfaces_and_exposes_both_ports() -> None:
    """RELAY_METRICS_HOST=0.0.0.0 (the relay's default is loopback) and ports 8080 and 9191."""
    steps = instructions()
    env = " ".join(arguments for keyword, arguments in steps if keyword == "ENV")
    assert "RELAY_METRICS_HOST=0.0.0.0" in env.split()
    (exposed,) = [arguments.split() for keyword, arguments in steps if keyword == "EXPOSE"]
    assert exposed == ["8080", "9191"]


def test_the_build_context_holds_the_package_and_no_secrets_or_local_state() -> None:
    """pyproject.toml, README.md, relay/, workers/ go in; .env, .venv, .git, tests, caches don't."""
    for path in (
        "pyproject.toml",
        "README.md",
        "relay/cli.py",
        "relay/ingest/app.py",
        "workers/actors.py",
    ):
        assert in_build_context(path), path
    for path in (
        ".env",
        ".venv/bin/python",
        ".git/HEAD",
        ".relay/appendonly.aof",
        "tests/conftest.py",
        "deploy/compose.yaml",
        "benchmarks/results/x.json",
        "relay/__pycache__/cli.cpython-311.pyc",
        "workers/__pycache__/actors.cpython-311.pyc",
        "sns_relay.egg-info/PKG-INFO",
    ):
        assert not in_build_context(path), path


def test_every_file_the_dockerfile_copies_is_in_the_build_context() -> None:
    """Each COPY source is sent to the engine (else the build fails with 'not found')."""
    sources = [
        source
        for keyword, arguments in instructions()
        if keyword == "COPY"
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    ]
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert in_build_context(source), source


def test_the_copied_files_make_the_whole_installable_package(tmp_path: Path) -> None:
    """The copied files hold pyproject's readme, every package, and the `relay` script."""
    # Given the build-context files the Dockerfile copies, in a fresh directory
    copied = tmp_path / "src"
    copied.mkdir()
    for keyword, arguments in instructions():
        if keyword != "COPY":
            continue
        *sources, _destination = arguments.split()
        for source in sources:
            origin = REPO_ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin, copied / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(origin, copied / source)
    # Then every package of the repository is there, as pyproject's discovery finds them
    project = tomllib.loads((copied / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = python_packages(copied, include)
    expected = python_packages(REPO_ROOT, include)
    assert {"relay", "relay.ingest", "relay.local_sns", "workers"} <= packages
    assert packages == expected
    assert (copied / project["project"]["readme"]).is_file()
    assert project["project"]["scripts"]["relay"] == "relay.cli:main"


def python_packages(root: Path, include: list[str]) -> set[str]:
    """Dotted names of the directories under `root` holding Python modules, kept by `include`
    (setuptools' `packages.find.include` patterns)."""
    names = set()
    tops = [path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")]
    for top in tops:
        for module in top.rglob("*.py"):
            relative = module.parent.relative_to(root)
            name = ".".join(relative.parts)
            if "__pycache__" not in relative.parts and any(
                fnmatch.fnmatchcase(name, pattern) for pattern in include
            ):
                names.add(name)
    return names


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*", "relay", True),
        ("*", "relay/cli.py", False),
        ("**/__pycache__", "relay/local_sns/__pycache__", True),
        ("**/*.pyc", "x.pyc", True),
        ("relay/", "relay", True),
    ],
)
def test_the_dockerignore_matcher_follows_dockers_rules(
    pattern: str, path: str, matches: bool
) -> None:
    """The test's own matcher: * stays within a directory, **/ spans any depth, / is trimmed."""
    assert bool(_pattern_regex(pattern).fullmatch(path)) is matches
