"""The package map's import rules are checked by import-linter in scripts/test; these tests show the
check can fail. A copy of the package gets one module that breaks a rule, and `lint-imports` run
on the copy (with the project's own contracts) must fail and name the offending import, while the
unmodified copy passes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "engine", tmp_path / "engine", ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def lint_available() -> None:
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: import-linter is a dev dependency (pip install -e '.[dev]')")


def test_the_package_as_it_is_keeps_every_contract(tmp_path: Path, lint_available: None) -> None:
    res = _lint(_copy(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "broken" not in res.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(("module", "statement", "contract"), [
    ("engine/core/_violation.py", "import engine.connectors.base\n", "Layers"),
    ("engine/core/_violation2.py", "import psycopg\n", "core does no I/O"),
    ("engine/app/_violation.py", "from engine.local import stack\n", "optional extra"),
    ("engine/connectors/_violation.py", "import engine.app.reconcile\n", "Layers"),
    ("engine/cli/_violation.py", "from engine.store import ledger\n", "through app"),
    ("engine/executors/_violation.py", "from distributed import Client\n", "Dask is an optional extra"),
])
def test_a_module_breaking_a_rule_fails_the_check(tmp_path: Path, lint_available: None,
                                                  module: str, statement: str, contract: str) -> None:
    tree = _copy(tmp_path)
    (tree / module).write_text(f'"""A deliberate violation."""\n{statement}')
    res = _lint(tree)
    assert res.returncode == 1, res.stdout + res.stderr
    broken = res.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken
    assert module.removesuffix(".py").replace("/", ".") in broken
