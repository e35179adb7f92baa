"""Every command's option list against a snapshot taken before the package move (issue 14).

The move must not change what a scheduler or a script can pass. The snapshot is regenerated only on
purpose, with ``RECON_UPDATE_CLI_SNAPSHOT=1``, and a change to it is reviewed like an API change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

SNAPSHOT = Path(__file__).parent / "snapshots" / "cli_options.json"


def _params(cmd: Any) -> list[dict[str, Any]]:
    rows = []
    for p in cmd.params:
        if p.name == "help":
            continue
        rows.append({
            "name": p.name,
            "kind": type(p).__name__.lower().replace("typer", ""),
            "opts": sorted([*p.opts, *getattr(p, "secondary_opts", [])]),
            "flag": bool(getattr(p, "is_flag", False)),
            "multiple": bool(getattr(p, "multiple", False)),
            "required": bool(p.required),
        })
    return sorted(rows, key=lambda r: r["name"])


def _walk(cmd: Any, path: str, out: dict[str, Any]) -> None:
    out[path or "recon"] = _params(cmd)
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        _walk(sub, f"{path} {name}".strip(), out)


def option_lists() -> dict[str, Any]:
    from engine.cli.main import app

    out: dict[str, Any] = {}
    _walk(typer.main.get_command(app), "", out)
    return out


def test_every_command_keeps_its_options() -> None:
    now = option_lists()
    if os.environ.get("RECON_UPDATE_CLI_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    want = json.loads(SNAPSHOT.read_text())
    assert sorted(now) == sorted(want), "commands added or removed"
    for path in want:
        assert now[path] == want[path], f"options of `{path}` changed"
