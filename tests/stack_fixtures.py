"""The whole embedded stack with the incident scenario loaded, driven through the CLI as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SCENARIO_ACCOUNTS = 2000


def recon(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


@dataclass
class Stack:
    state: Path
    endpoints: dict[str, Any]
    config: Path
    truth: dict[str, Any]
    env: dict[str, str]

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return recon(*args, env={**self.env, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="session")
def scenario_stack() -> Iterator[Stack]:
    from tests.pg_fixtures import server_dir

    state = server_dir("stack") / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    env["RECON_STATE_DIR"] = str(state)
    up = recon("services", "up", "--json", env=env)
    assert up.returncode == 0, up.stderr
    endpoints = json.loads(up.stdout)
    try:
        cfg = state.parent / "recon.toml"
        load = recon("scenario", "load", "--accounts", str(SCENARIO_ACCOUNTS), "--config-out", str(cfg), "--json", env=env)
        assert load.returncode == 0, load.stderr
        truth = json.loads(Path(json.loads(load.stdout)["ground_truth"]).read_text())
        yield Stack(state=state, endpoints=endpoints, config=cfg, truth=truth, env=env)
    finally:
        recon("services", "down", env=env)
        shutil.rmtree(state.parent, ignore_errors=True)
