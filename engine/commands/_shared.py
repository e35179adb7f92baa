"""Helpers shared by command modules: JSON on stdout, one-line progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def emit_json(obj: Any) -> None:
    """One JSON object on stdout (sorted keys, decimals and times as strings)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def progress(msg: str) -> None:
    err.print(f"[dim]·[/dim] {msg}")
