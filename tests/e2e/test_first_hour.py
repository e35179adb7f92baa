"""The first hour of a new user (issue 21): help that says what each option declares, unknown
commands that point to the help, and output that survives a pipe or a log file. The waits that say
what they wait for are checked where the waits are met: tests/e2e/test_errors_cli.py (PostgreSQL,
Salesforce) and tests/integration/test_forensics.py (Kafka)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import typer

ROOT = Path(__file__).resolve().parents[2]


def recon(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_", "COLUMNS"))}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=60, cwd=cwd)


# -- help ------------------------------------------------------------------------------------------

def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def _declared() -> list[tuple[tuple[str, ...], str, str]]:
    """(command path, parameter, help text as declared) for every option and argument of every
    command, from a tree built before the CLI prepares it for display."""
    from engine.cli.main import app

    rows = []
    for path, cmd in _commands(typer.main.get_command(app)):
        for p in cmd.params:
            if p.name != "help" and getattr(p, "help", None):
                rows.append((path, p.name, p.help))
    return rows


def _help(root: Any, path: tuple[str, ...]) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        root.main(args=[*path, "--help"], prog_name="recon", standalone_mode=False)
    return buf.getvalue()


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "terminal"])
def test_every_word_of_each_option_help_is_in_its_commands_help(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """rich took ``[mapping.NAME]`` for a style tag and printed "A  of the config": every word an
    option declares must reach the reader, in plain (pipe) and rich (terminal) help alike."""
    import typer.rich_utils

    from engine.cli.main import command

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 1000)  # the terminal case: no folding, words whole
    declared = _declared()
    assert len({path for path, _, _ in declared}) >= 20 and any("[mapping.NAME]" in h for _, _, h in declared)
    root = command(tty=tty)
    helps: dict[tuple[str, ...], str] = {}
    for path, name, text in declared:
        if path not in helps:
            helps[path] = _help(root, path)
        missing = [w for w in text.split() if w not in helps[path]]
        assert not missing, f"`recon {' '.join(path)} --help`, option {name}: {missing} missing"


def test_help_in_a_pipe_is_plain_and_one_line_per_option() -> None:
    res = recon("diff", "--help")
    assert res.returncode == 0, res.stderr
    assert "╭" not in res.stdout and "\x1b" not in res.stdout
    line = next(ln for ln in res.stdout.splitlines() if "--ledger" in ln)
    assert line.rstrip().endswith("or the ledger dsn in recon.toml)."), line  # a long help, not folded


def test_an_unknown_command_points_to_the_help() -> None:
    res = recon("difff")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "recon: error: No such command 'difff'. Did you mean 'diff'? See `recon --help`."], res.stderr
    from engine.cli.main import _is_cli_usage_error, _usage_line, command

    with pytest.raises(Exception) as exc:  # in a group: that group's help
        command(tty=False).main(args=["services", "halt"], prog_name="recon", standalone_mode=False)
    assert _is_cli_usage_error(exc.value)
    assert _usage_line(exc.value) == "recon: error: No such command 'halt'. See `recon services --help`."


# -- output that survives a pipe ---------------------------------------------------------------------

def test_a_long_line_and_a_long_table_value_stay_whole_in_a_pipe(tmp_path: Path) -> None:
    """In a log file the numbers wrapped away from their labels at 80 columns: nothing recon prints
    to a pipe is folded, however long the line or the table cell."""
    col = "Customer_Lifetime_Value_as_reported_by_the_quarterly_finance_close_of_the_northern_region__c"
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    money = pl.Decimal(20, 2)
    pl.DataFrame({"id": ["1", "2"], col: pl.Series(["10.00", "20.00"]).cast(money)}).write_parquet(a)
    pl.DataFrame({"id": ["1", "2"], col: pl.Series(["10.00", "123456789012.34"]).cast(money)}).write_parquet(b)
    out = tmp_path / ("a-rather-long-output-directory-name-" * 3) / "diff"
    res = recon("diff", f"parquet:{a}", f"parquet:{b}", "-k", "id", "--out", str(out))
    assert res.returncode == 1, res.stderr
    lines = res.stdout.splitlines()
    row = [ln for ln in lines if col in ln]
    assert len(row) == 1 and "123456788992.34" in row[0], res.stdout  # the value on its label's line
    written = [ln for ln in lines if ln.startswith("written: ")]
    assert written == [f"written: {out / 'summary.json'}, {out / 'differences.parquet'}"], res.stdout
