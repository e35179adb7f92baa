"""What a scan of an event topic is, apart from how it is read: the event's field names, the window
to read, the scanned frame, the one timestamp format, and the one definition of a valid event.

The definition (below :class:`Scan`) is shared by ``recon kafka-audit``/``explain`` (column-wise, in
:func:`engine.core.forensics.prepare`) and ``recon consume`` (per message, and column-wise for the
producers' shape), so that both give every message the same verdict and the same exact amount:

- the value is UTF-8 JSON text holding one object, with no key twice in any object (which of two
  ``"amount"`` members counts is otherwise up to the parser) and no ``NaN``/``Infinity``
  (:func:`parse_json`); anything else is *unparsable*;
- the five event fields are present and not null, and each is a JSON string, except that the
  amount may also be an unquoted JSON number, taken as the exact text it is written with (never
  through a float: :class:`JsonNumber`);
- the org and record ids are Salesforce ids (15 characters, or 18 with the right suffix), the
  event type 1 to :data:`MAX_EVENT_TYPE_LEN` characters without NUL, the event time an ISO-8601
  time (:func:`event_time`), and the amount a plain decimal that ``Decimal(38, 6)`` holds exactly
  (:data:`AMOUNT_PATTERN`: at most 32 digits before the point and 6 after, no exponent, no blanks).
  An amount the audit's scale cannot hold is invalid for both, never rounded.

Pure (no I/O), so the forensics in ``core`` can analyse a scan without importing a Kafka client.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import polars as pl

from engine.core.errors import UsageError
from engine.core.ids import canonical_time


@dataclass(frozen=True)
class EventFields:
    """Names of the JSON fields in an event (configurable in every command that reads events:
    producers differ). One definition for kafka-audit, explain and consume."""

    record_id: str = "account_id"
    event_type: str = "event_type"
    event_time: str = "event_ts"
    amount: str = "amount"
    org_id: str = "org_id"

    def __post_init__(self) -> None:
        names = [self.record_id, self.event_type, self.event_time, self.amount, self.org_id]
        if any(not n or not n.strip() for n in names):
            raise UsageError("field names must not be empty (--record-id-field, --event-type-field, "
                             "--event-time-field, --amount-field, --org-id-field)")
        if len(set(names)) != len(names):
            raise UsageError(f"field names must be distinct, got {', '.join(names)}")

    def names(self) -> list[str]:
        return [self.org_id, self.record_id, self.event_type, self.event_time, self.amount]


@dataclass(frozen=True)
class Window:
    """Which part of the topic to read: a time range, explicit offsets per partition, or all of it.

    offsets: partition → (first offset, last offset) inclusive.
    lookback_s: start this much earlier than ``start`` (to recognise duplicates of earlier events),
      without counting those earlier messages in the window.
    """

    start: datetime | None = None
    end: datetime | None = None
    offsets: dict[int, tuple[int, int]] | None = None
    lookback_s: float = 0.0


@dataclass
class Scan:
    """The scanned messages, in (partition, offset) order. ``frame`` columns: partition, offset,
    ts_ms, ts_type, key, org_header, producer_id, sequence, in_window, status ('ok' | 'unparsable' |
    'tombstone'), raw (str, only for unparsable), and the parsed fields (org_id, record_id,
    event_type, event_time, amount as text)."""

    frame: pl.DataFrame
    topic: str
    partitions: dict[int, dict[str, int | None]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0


def iso_ms(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -------------------------------------------------------------------------------------------------
# A valid event: the one definition (see the module docstring)

AMOUNT_SCALE: Final[int] = 6
AMOUNT_DTYPE: Final = pl.Decimal(38, AMOUNT_SCALE)
AMOUNT_PATTERN: Final[str] = rf"[+-]?[0-9]{{1,{38 - AMOUNT_SCALE}}}(?:\.[0-9]{{1,{AMOUNT_SCALE}}})?"
"""A valid amount's text: exactly the decimals ``Decimal(38, 6)`` holds, spelled plainly (ASCII
digits only, so no other script's digits slip through)."""
AMOUNT_RE: Final = re.compile(AMOUNT_PATTERN)
MAX_EVENT_TYPE_LEN: Final[int] = 255
CANON_TIME_PATTERN: Final[str] = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
_CANON_TIME_RE = re.compile(CANON_TIME_PATTERN)


class JsonNumber(str):
    """An unquoted JSON number, kept as the exact text it is written with: a float would turn
    ``123456789012.345678`` into ``123456789012.34567`` and still look like a valid amount."""

    __slots__ = ()


class DuplicateKey(ValueError):
    """A JSON object names a key twice."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # rare: find the key to name it
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKey(f"duplicate key {k!r}")
            seen.add(k)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for the process (json.loads(..., hooks) would build one per call).
_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_float=JsonNumber, parse_int=JsonNumber,
                            parse_constant=_reject_constant)
_SCAN = _DECODER.scan_once


def parse_json(value: bytes) -> Any:
    """The strict JSON value of a message: UTF-8, no duplicate key in any object, numbers as
    :class:`JsonNumber`, no ``NaN``/``Infinity``. Raises ValueError (UnicodeDecodeError is one).
    The common compact ``{...}`` takes the C scanner directly; anything else (whitespace around
    it, another type) goes through the full decoder."""
    s = value.decode("utf-8")
    if s[:1] == "{":
        try:
            obj, end = _SCAN(s, 0)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end == len(s):
            return obj
    return _DECODER.decode(s)


def json_type(value: Any) -> str:
    """The type name of a parsed value, for messages saying what a value is instead ("number" for
    any unquoted number, else the Python type's name: dict, list, str, bool, NoneType)."""
    return "number" if isinstance(value, JsonNumber) else type(value).__name__


def encodable(s: str) -> bool:
    """False for strings with lone surrogates (JSON allows "\\ud800"; UTF-8 and PostgreSQL don't)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_TEXT: Final[str] = ""
"""What :func:`field_texts` gives for a field that is present but not a storable text: a value that
every field's rule rejects, so the event is invalid (not missing)."""


def field_texts(obj: dict[str, Any], names: list[str]) -> list[str | None]:
    """The texts of the event fields ``names`` (org, record, type, time, amount) of a parsed
    object, for the column-wise checks: None when absent or null, :data:`NOT_TEXT` when not a
    string of valid UTF-8, except the amount's unquoted number, which is its exact text."""
    out: list[str | None] = []
    last = len(names) - 1
    for i, n in enumerate(names):
        x = obj.get(n)
        if x is None:
            out.append(None)
        elif type(x) is str:
            out.append(x if x.isascii() or encodable(x) else NOT_TEXT)
        elif i == last and type(x) is JsonNumber:
            out.append(str(x))
        else:
            out.append(NOT_TEXT)
    return out


def amount_text(value: Any) -> str | None:
    """The exact text of a valid amount (a JSON string or unquoted number), else None."""
    if type(value) is JsonNumber:
        value = str(value)
    return value if type(value) is str and AMOUNT_RE.fullmatch(value) else None


def event_type_ok(value: Any) -> bool:
    return (type(value) is str and 0 < len(value) <= MAX_EVENT_TYPE_LEN and "\x00" not in value
            and (value.isascii() or encodable(value)))


def event_time(value: Any) -> str | None:
    """The event time as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, ms), or None when it is not a time.

    ASCII only: Python's ``\\d`` and ``fromisoformat`` accept other scripts' digits, which
    PostgreSQL would reject. The result must have the canonical shape (years 1..9999, four digits)."""
    if type(value) is not str or not value.isascii():
        return None
    if _CANON_TIME_RE.fullmatch(value):
        return value
    try:
        t = canonical_time(value)
    except (ValueError, TypeError, OverflowError):
        return None
    return t if _CANON_TIME_RE.fullmatch(t) else None


# column-wise, for the audit: the same rules over text columns

def amounts(text: pl.Series) -> pl.Series:
    """Amount texts as ``Decimal(38, 6)``; null where the text is not a valid amount (so the event
    is invalid). Only texts that match :data:`AMOUNT_PATTERN` are cast, and those cast exactly."""
    ok = text.str.contains(f"^(?:{AMOUNT_PATTERN})$").fill_null(False)
    if not ok.all():
        text = text.set(~ok, None)  # type: ignore[arg-type]
    return text.cast(AMOUNT_DTYPE, strict=False)


def event_types_ok(typ: pl.Expr) -> pl.Expr:
    """:func:`event_type_ok` over a text column (a Polars text is always valid UTF-8)."""
    n = typ.str.len_chars()
    return ((n > 0) & (n <= MAX_EVENT_TYPE_LEN) & ~typ.str.contains("\x00", literal=True)).fill_null(False)


def event_times(times: pl.Series) -> pl.Series:
    """:func:`event_time` over a text column: canonical texts pass as they are, the others go
    through :func:`event_time` one by one (rare), invalid ones become null."""
    ok = times.str.contains(f"^{CANON_TIME_PATTERN}$").fill_null(False)
    if bool(ok.all()):
        return times
    idx = (~ok & times.is_not_null()).arg_true()
    out = times.set(~ok, None)  # type: ignore[arg-type]
    if len(idx):
        out = out.scatter(idx, pl.Series([event_time(v) for v in times.gather(idx).to_list()], dtype=pl.Utf8))
    return out
