"""The adversarial review's attacks, as data: what the attacker supplies, the command it reaches,
the exit recon must give, and the state that must hold afterwards.

Each area keeps its rows in its own ``attacks_<area>.py`` module (a list ``ATTACKS``), and
``test_adversarial.py`` runs them all against the shared scenario stack, so one table shows every
attack and a new one is one entry.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.stack_fixtures import Stack

Run = subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class Attack:
    """One attack. ``item``: the issue item it reproduces (``"16.1"``); ``payload``: what the attacker
    supplies, as the review wrote it; ``setup`` prepares the state (a victim table, messages on a
    topic) and returns values the other callables receive as ``ctx``; ``command`` gives recon's
    arguments; ``exit`` the code recon must end with; ``after`` asserts the state afterwards (the
    victim table intact, counts, dead letters); ``teardown`` stops what ``setup`` started (a hostile
    endpoint), whatever the outcome."""

    item: str
    name: str
    payload: str
    command: Callable[[Stack, Path, dict], list[str]]
    exit: int
    after: Callable[[Stack, Path, dict, Run], None]
    setup: Callable[[Stack, Path], dict] | None = None
    env: dict[str, str] = field(default_factory=dict)
    teardown: Callable[[dict], None] | None = None

    @property
    def id(self) -> str:
        return f"{self.item}-{self.name}"
