"""Exit 70 is the contract's "a bug": the one path where a traceback is printed, so it can be
reported. A command that fails with an unexpected exception must take it, and only it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a command with a bug in it, registered on the real app and run through the real entry point
CODE = ("import engine.cli.main as m\n"
        "@m.app.command('boom')\n"
        "def boom() -> None:\n"
        "    {}['missing']\n"
        "m.main()\n")


def _run(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-c", CODE, "boom"], capture_output=True, text=True, env=env,
                          timeout=60, cwd=ROOT)


def test_an_unexpected_exception_exits_70_with_its_traceback_and_one_closing_line() -> None:
    res = _run({})
    assert res.returncode == 70, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("Traceback") and "KeyError" in res.stderr
    assert lines[-1] == "recon: internal error: KeyError: 'missing' (a bug; please report it)"


def test_recon_debug_0_keeps_the_closing_line_without_the_traceback() -> None:
    res = _run({"RECON_DEBUG": "0"})
    assert res.returncode == 70
    assert res.stderr.strip() == "recon: internal error: KeyError: 'missing' (a bug; please report it)"
