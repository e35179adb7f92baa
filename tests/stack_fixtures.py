"""The whole embedded stack with the incident scenario loaded, driven through the CLI as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import prereqs

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


@contextmanager
def own_stack(base: Path, *, ledger: bool = False, keys: bool = False) -> Iterator[Stack]:
    """A running stack with the scenario loaded, in ``base`` (removed afterwards). ``ledger``: the
    ledger initialised (the gate writes to it); ``keys``: a key pair in ``base/keys``. Modules whose
    tests write state get their own, so the shared ``scenario_stack`` stays untouched."""
    state = base / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    env["RECON_STATE_DIR"] = str(state)
    up = recon("services", "up", "--json", env=env)
    assert up.returncode == 0, up.stderr
    endpoints = json.loads(up.stdout)
    prereqs.assert_apache(endpoints["kafka_backend"], "the scenario stack")
    if ledger:
        env["PGPASSFILE"] = endpoints["pgpass_file"]  # the ledger DSN in recon.toml is TCP without a password
    try:
        cfg = base / "recon.toml"
        load = recon("scenario", "load", "--accounts", str(SCENARIO_ACCOUNTS), "--config-out", str(cfg), "--json",
                     env=env)
        assert load.returncode == 0, load.stderr
        truth = json.loads(Path(json.loads(load.stdout)["ground_truth"]).read_text())
        s = Stack(state=state, endpoints=endpoints, config=cfg, truth=truth, env=env)
        if ledger:  # as the administrator: the config's ledger DSN is the writer, which may not init
            init = s.run("ledger", "init", "-C", str(cfg), "--dsn", endpoints["postgres_dsn"])
            assert init.returncode == 0, init.stderr
        if keys:
            made = s.run("keygen", "--out", str(base / "keys"))
            assert made.returncode == 0, made.stderr
        yield s
    finally:
        recon("services", "down", env=env)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def scenario_stack() -> Iterator[Stack]:
    from tests.pg_fixtures import server_dir

    with own_stack(server_dir("stack")) as s:
        yield s
