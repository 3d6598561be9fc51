"""The layering rule: `relay` (producer side and shared core) never imports `workers` or boto3."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

RELAY_DIR = Path(__file__).resolve().parents[1] / "relay"
FORBIDDEN = frozenset({"workers", "boto3", "botocore"})


def relay_sources() -> list[Path]:
    return sorted(RELAY_DIR.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(RELAY_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    """The package that relative imports in `path` start from."""
    return ".".join(path.relative_to(RELAY_DIR.parent).parts[:-1])


def forbidden_imports(source: str, package: str = "relay") -> list[str]:
    """Top-level module names in FORBIDDEN that `source` imports, in any form, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside `package` unless it climbs out of it
                parts = package.split(".")
                base = parts[: max(len(parts) - node.level + 1, 0)]
                if node.module:
                    names = [".".join([*base, node.module])]
                else:  # `from .. import x`: x is a module beside the package
                    names = [".".join([*base, alias.name]) for alias in node.names]
            else:
                names = [node.module or ""]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in FORBIDDEN]
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import boto3", ["boto3"]),
        ("import botocore.exceptions as bce", ["botocore.exceptions"]),
        ("from workers.sns import publish", ["workers.sns"]),
        ("def f():\n    from boto3 import client", ["boto3"]),
        ("import importlib\nimportlib.import_module('workers.actors')", ["workers.actors"]),
        ("__import__('boto3')", ["boto3"]),
        ("import relay.limits\nfrom relay import event\nfrom . import keys", []),
        ("from .. import workers", ["workers"]),
        ("import boto3_stubs_lite_not_boto3", []),
    ],
)
def test_the_import_scanner_finds_forbidden_imports(source: str, expected: list[str]) -> None:
    """The scanner itself flags boto3, botocore and workers imports and nothing else."""
    assert forbidden_imports(source) == expected


def test_no_relay_module_imports_workers_or_boto3() -> None:
    """No file under relay/ imports workers, boto3 or botocore, even inside a function."""
    sources = relay_sources()
    assert RELAY_DIR / "limits.py" in sources  # the scan is looking at the real package
    offenders = {
        str(path.relative_to(RELAY_DIR.parent)): names
        for path in sources
        if (names := forbidden_imports(path.read_text("utf-8"), package_of(path)))
    }
    assert offenders == {}


def test_importing_every_relay_module_loads_neither_workers_nor_boto3() -> None:
    """In a fresh interpreter, importing every relay module leaves boto3 and workers unloaded."""
    # Given every relay module that exists now
    modules = [module_name(path) for path in relay_sources()]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"forbidden = {sorted(FORBIDDEN)!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in forbidden)))\n"
    )
    # When a fresh interpreter imports them all
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=RELAY_DIR.parent,
    )
    # Then none of the forbidden modules was loaded along the way
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
