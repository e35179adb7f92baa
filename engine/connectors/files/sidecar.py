"""The JSON sidecar of a snapshot file: ``PATH.json`` next to ``PATH``. The one reader and writer of
its format, so that what ``recon snapshot`` writes is exactly what ``recon diff csv:PATH`` and
``parquet:PATH`` read.

Why a sidecar: a CSV holds text only, and a Parquet file written from text (a Salesforce or CSV
extract) holds strings. Typing a column by looking at its values loses data (``00123`` would become
123, a 20-digit amount a float), so a column's type comes from the other side's schema or from here.

Format::

    {
      "schema": {
        "Id":     {"kind": "id"},
        "Amount": {"kind": "decimal", "scale": 2},
        "Close":  "date",
        "Rate":   "decimal:6"
      }
    }

``schema`` maps a column (as named in the file's header, any case) to its kind, one of
:data:`engine.core.normalize.KINDS`: an object with ``kind`` (and for ``decimal`` an optional
``scale``, 0 to 38: digits after the point; without it the other side's scale, else 6), or the
same as a string ``"kind"`` / ``"decimal:SCALE"``. A column the schema does not name is text unless
the other side types it. Other keys (``recon snapshot`` adds ``source``, ``rows``, ``key``,
``merkle``, ``extract``, and ``native_type`` per column) are facts for people and verifiers, ignored
when reading types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.decimals import MAX_DIGITS
from engine.core.errors import UsageError
from engine.core.normalize import KINDS, ColumnType

SUFFIX = ".json"
EXAMPLE = '{"schema": {"amount": {"kind": "decimal", "scale": 2}}}'


@dataclass(frozen=True)
class Declared:
    """One column's type as a sidecar declares it (``scale`` None: not given)."""

    kind: str
    scale: int | None = None


def path_for(data: Path) -> Path:
    """Where the sidecar of a snapshot file lives: ``PATH.json``."""
    return data.with_name(data.name + SUFFIX)


def read_extracted_at(data: Path) -> str | None:
    """When the snapshot's own source was read (``extract.extracted_at``, or a PostgreSQL
    ``server_time``), as ``recon snapshot`` recorded it; None without a sidecar or that fact. The
    gate needs it: a diff that cannot say when a side was read counts as stale."""
    side = path_for(data)
    if not side.is_file():
        return None
    try:
        doc = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return None  # read_schema reports a broken sidecar
    ex = doc.get("extract") if isinstance(doc, dict) else None
    t = (ex.get("extracted_at") or ex.get("server_time")) if isinstance(ex, dict) else None
    return t if isinstance(t, str) and t else None


def read_schema(data: Path, columns: list[str]) -> dict[str, Declared]:
    """The declared type of each of ``columns`` the sidecar names (none without a sidecar). A
    sidecar that is not valid JSON, names an unknown kind or scale, or a column the file does not
    have, is an input error naming the sidecar and what to fix: a typo must not silently leave a
    money column as text."""
    side = path_for(data)
    if not side.is_file():
        return {}
    try:
        doc = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read the sidecar {side}: {exc}: it must be JSON like {EXAMPLE}") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema is None:
        return {}
    if not isinstance(schema, dict):
        raise UsageError(f"sidecar {side}: \"schema\" must be an object of column → kind, like {EXAMPLE}")
    by_lower = {c.lower(): c for c in columns}
    out: dict[str, Declared] = {}
    for name, spec in schema.items():
        col = name if name in columns else by_lower.get(str(name).lower())
        if col is None:
            raise UsageError(f"sidecar {side} types column {name!r}, which {data.name} does not have "
                             f"(columns: {', '.join(columns)}): fix the name in the sidecar")
        out[col] = _declared(spec, side, name)
    return out


def _declared(spec: Any, side: Path, name: str) -> Declared:
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        scale: Any = arg if arg else None
    elif isinstance(spec, dict):
        kind, scale = spec.get("kind"), spec.get("scale")
    else:
        kind, scale = None, None
    if kind not in KINDS:
        raise UsageError(f"sidecar {side}: column {name!r} has kind {spec!r}: use one of {', '.join(KINDS)}, "
                         f"like {EXAMPLE}")
    if scale is not None and kind == "decimal":
        try:
            scale = int(scale)
        except (TypeError, ValueError):
            scale = -1
        if not 0 <= scale <= MAX_DIGITS:
            raise UsageError(f"sidecar {side}: column {name!r} has scale {spec!r}: a decimal scale is a whole "
                             f"number from 0 to {MAX_DIGITS}")
    return Declared(str(kind), scale if kind == "decimal" else None)


def write(data: Path, schema: dict[str, ColumnType], *, native_types: dict[str, str] | None = None,
          **facts: Any) -> Path:
    """Write ``PATH.json`` for a snapshot file: the columns' types (read back by :func:`read_schema`)
    and any other facts (JSON-serialisable; times as text)."""
    native = native_types or {}
    doc = {**facts, "schema": {c: {"kind": t.kind, "scale": t.scale, "native_type": native.get(c, "")}
                               for c, t in schema.items()}}
    side = path_for(data)
    side.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return side
