"""One message's values, checked and encoded: JSON parsing, Salesforce ids, event types, times, COPY text.

Owns the per-value helpers of the per-message path of :func:`transform` (and of the writer's
message-by-message fallback): each decides whether a value is storable and gives its COPY or JSON
text. Several are cached, because values repeat heavily in a stream. Their source is part of the
lineage digest (:func:`transform_digest`). Salesforce ids are checked by
``engine.core.sfid.to18_or_none``, whose module the digest covers whole.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from engine.connectors.kafka.consumer.settings import _MAX_DETAIL_LEN, _MAX_EVENT_TYPE_LEN
from engine.core import events

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]")
_AMOUNT = events.AMOUNT_RE  # the one amount rule (Decimal(38, 6) exactly), shared with kafka-audit
_CANON_TS = re.compile(events.CANON_TIME_PATTERN)


def _copy_text(s: str) -> str:
    """A value for COPY's text format (tabs, newlines and backslashes escaped)."""
    return s.translate(_ESCAPES) if _NEEDS_ESCAPE.search(s) else s


def _clean_text(b: bytes | None) -> str | None:
    """UTF-8 text PostgreSQL can store (no NUL, no invalid bytes), else None."""
    if b is None:
        return None
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in s else s


def _headers_json(headers: Sequence[tuple[str, bytes | None]] | None) -> str:
    """Headers as a JSON array of ``{"key", "value"}`` (``value_base64`` for binary values)."""
    out: list[dict[str, Any]] = []
    for k, v in headers or ():
        name = k.replace("\x00", "\\u0000") if isinstance(k, str) else repr(k)
        text = _clean_text(v)
        if v is None:
            out.append({"key": name, "value": None})
        elif text is not None:
            out.append({"key": name, "value": text})
        else:
            out.append({"key": name, "value_base64": base64.b64encode(v).decode("ascii")})
    return json.dumps(out, ensure_ascii=False) if out else "[]"


def _detail(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_LEN else text[: _MAX_DETAIL_LEN - 1] + "…"


def _parse(value: bytes) -> Any:
    """The JSON value of a message, by the one strict rule of :func:`engine.core.events.parse_json`
    (no duplicate keys; numbers as their exact text, never floats)."""
    return events.parse_json(value)


_event_types: dict[str, str | None] = {}


def _event_type_copy(typ: Any) -> str | None:
    """The event type escaped for COPY, or None when it is not a storable non-empty text (too long,
    NUL, lone surrogate). Cached: a stream has a handful of event types."""
    if type(typ) is not str:
        return None
    r = _event_types.get(typ, "")
    if r != "":
        return r
    if not typ or len(typ) > _MAX_EVENT_TYPE_LEN or "\x00" in typ or (not typ.isascii() and not _encodable(typ)):
        r = None
    else:
        r = _copy_text(typ)
    if len(_event_types) > 10_000:
        _event_types.clear()
    _event_types[typ] = r
    return r


_fragments: dict[bytes, str | None] = {}


def _json_fragment(b: bytes | None) -> str | None:
    """The JSON string literal of header or key bytes, ready for a COPY text field (backslashes
    doubled), or None unless clean UTF-8 (no NUL).

    Cached: org ids, producer ids and keys repeat across a stream, and this runs several times
    per message. Plain printable ASCII skips json.dumps (a third of its cost). JSON literals hold
    no raw tab or newline, so doubling backslashes is all the COPY escaping they need, and the
    lineage built from them needs no scan of its own.
    """
    r = _fragments.get(b, "")  # type: ignore[arg-type]
    if r != "":
        return r
    if b is None:
        return None
    s = _clean_text(b)
    if s is None:
        r = None
    elif s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        r = f'"{s}"'
    else:
        r = json.dumps(s, ensure_ascii=True).replace("\\", "\\\\")
    if len(_fragments) > 200_000:
        _fragments.clear()
    _fragments[b] = r
    return r


_encodable = events.encodable  # the one rule, in engine.core.events (part of the lineage digest through it)


def _canonical_ts(ts: Any, canon_match: Callable[[str], Any]) -> str | None:
    """The event time as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, ms), or None when it is not a time:
    :func:`engine.core.events.event_time`, the rule kafka-audit applies too."""
    return events.event_time(ts)
