"""CLI command modules beyond `diff` and `snapshot` (in `engine/cli/main.py`).

Each module here defines ``register(app: typer.Typer) -> None`` and adds its commands; modules are
discovered, so adding a command is adding a file. Keep module-level imports light (typer only):
heavy libraries are imported inside the command functions, to keep `recon --help` fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def register_all(app: Any) -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)
