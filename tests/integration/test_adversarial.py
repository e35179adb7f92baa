"""Every attack of the adversarial review (issues 16 and 17) against the real stack: payload,
command, expected exit and the state afterwards, one row each (rows live in ``attacks_*.py``)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import tests.integration as _pkg
from tests.integration.attacks import Attack
from tests.stack_fixtures import Stack


def _all_attacks() -> list[Attack]:
    rows: list[Attack] = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(_pkg.__path__) if m.name.startswith("attacks_")):
        rows += importlib.import_module(f"tests.integration.{mod}").ATTACKS
    return rows


ATTACKS = _all_attacks()


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack(attack: Attack, scenario_stack: Stack, tmp_path: Path) -> None:
    ctx = attack.setup(scenario_stack, tmp_path) if attack.setup else {}
    try:
        run = scenario_stack.run(*attack.command(scenario_stack, tmp_path, ctx), env=attack.env or None)
        assert run.returncode == attack.exit, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
        if attack.exit != 0:
            assert "Traceback" not in run.stderr, run.stderr
        if attack.exit >= 2:  # an error: one line naming the problem and the fix (exit 1 is a result, with progress)
            assert len(run.stderr.strip().splitlines()) == 1, run.stderr
        attack.after(scenario_stack, tmp_path, ctx, run)
    finally:
        if attack.teardown:
            attack.teardown(ctx)
