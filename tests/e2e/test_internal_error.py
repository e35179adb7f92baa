"""Exit 70 is the contract's "a bug": the one path where a traceback is printed, so it can be
reported. A command that fails with an unexpected exception must take it, and only it."""

from __future__ import annotations

import json
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


def test_evidence_that_would_hold_a_secret_is_exit_70_in_one_line_through_main(tmp_path: Path) -> None:
    """The other exit 70 of the contract, through `python -m engine.cli.main` as a scheduler runs it: a
    diff whose signed evidence would carry a known secret (PGPASSWORD equals the diff's abs_variance,
    12.50 − 1.50 = 11.00) records nothing, prints one line naming where, never the value, and no
    traceback; nothing on stdout for a scheduler to mistake for a result."""
    (tmp_path / "s.csv").write_text("Id,amount\n001A,1.50\n001B,2.00\n")
    (tmp_path / "s.csv.json").write_text('{"schema": {"amount": "decimal:2"}}')
    (tmp_path / "t.csv").write_text("Id,amount\n001A,12.50\n001B,2.00\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    env["PYTHONPATH"] = str(ROOT)

    def recon(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=120, cwd=tmp_path)

    from engine.evidence.manifest import keygen

    keygen(tmp_path / "keys")
    args = ("diff", "csv:s.csv", "csv:t.csv", "-k", "Id", "-c", "amount", "--json", "--out", "out",
            "--manifest", "out/m.json", "--signing-key", "keys/recon.key")
    res = recon(*args, PGPASSWORD="11.00")
    assert res.returncode == 70, (res.returncode, res.stderr)
    assert res.stdout == "" and "Traceback" not in res.stderr and "11.00" not in res.stderr
    assert res.stderr.splitlines() == [
        "recon: error: evidence not recorded: the summary at columns.amount.abs_variance holds a known secret "
        "(a password or token from the environment, a DSN, a password file or the credentials file); no ledger "
        "run, manifest or lineage event was written for it: use a password that is not also a value of the "
        "results, and keep credentials out of names and messages"]
    assert not (tmp_path / "out" / "m.json").exists() and not (tmp_path / "out" / "openlineage").exists()
    # the same run with a password that is no value of the results is recorded (exit 1: a difference)
    ok = recon(*args, PGPASSWORD="not-a-value")
    assert ok.returncode == 1, ok.stderr
    assert json.loads(ok.stdout)["columns"]["amount"]["abs_variance"] == "11.00"
    assert (tmp_path / "out" / "m.json").is_file()
