"""One definition of a valid event: ``recon kafka-audit`` (and explain: the scan's parse, then
``forensics.prepare``) and ``recon consume`` (``transform``, both of its paths) must give every message
the same verdict and, for a valid event, the same event and the same exact amount.

Random messages built from raw JSON members, so that the edge cases of issue 16.5 are reachable:
unquoted numbers (as floats would round them), huge numbers, exponents, duplicated keys, whitespace,
escapes, non-object JSON, missing and null fields, fields of other types, 15-character ids, foreign
orgs, invalid UTF-8. Apart from the native loop's layout (``parse_array``, new), only APIs that
existed before the fix are used, so this test also ran (and failed) on the code before it.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from confluent_kafka import Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.connectors.kafka import consumer as c
from engine.connectors.kafka import native
from engine.connectors.kafka.columns import parse_values
from engine.core import forensics
from engine.core.events import EventFields, Scan
from engine.core.sfid import suffix

ORG = "00D5g0000000001EAA"
OTHER_ORG = "00D5g0000000002EAA"
NAMES = ("org_id", "account_id", "event_type", "event_ts", "amount")


def _j(x: Any) -> str:
    return json.dumps(x, separators=(",", ":"))


_ids15 = st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=15, max_size=15)
_record = st.one_of(_ids15.map(lambda s: _j(s + suffix(s))), _ids15.map(_j),  # 18 and 15 characters
                    _ids15.map(lambda s: _j(s + "AAA")), st.just('"001XYZ"'), st.just("7"), st.just("null"))
_org = st.sampled_from([_j(ORG), _j(ORG[:15]), _j(OTHER_ORG), '"00Dxyz"', '"00D5g0000000001eaa"', "true", "null"])
_type = st.one_of(st.sampled_from(['"purchase"', '"refund"', '""', '"a\\u0000b"', '"\\ud800"', '"caf\\u00e9"',
                                   '"caf\u00e9"', '"tab\\there"', '"q\\"x"', '"\\/s"', "7", "1.5", '["x"]',
                                   _j("x" * 255), _j("x" * 256)]),
                  st.text(min_size=0, max_size=8).map(_j))
_time = st.sampled_from(['"2026-08-01T10:00:00.123Z"', '"2026-08-01T12:00:00.123999+02:00"', '"2026-08-01 10:00:00"',
                         '"2026-08-01T10:00:00Z"', '"yesterday"', '"\uff12026-08-01T10:00:00.000Z"', '"0001-01-01T00:00:00+01:00"',
                         "1785578400", '"2026-08-01T10:00:00.123Z\\n"'])
_digits = st.integers(1, 40).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))
_amount = st.one_of(
    st.sampled_from(['"1071.02"', '"-0.75"', '"+0.01"', '"12"', '" 1.00"', '"1.00 "', '"1e3"', '"1E-2"', '"12,50"',
                     '".5"', '"5."', '"1.5000000"', '"\\u0661"', '"1\\u002e5"', "12", "12.5", "-0.75", "1e3", "1E+2",
                     "123456789012.345678", "1234567890123456789.12", "1e400", "true", "null", '{"v":"1"}']),
    st.tuples(st.sampled_from(["", "-"]), _digits, st.one_of(st.just(""), _digits.map(lambda d: "." + d)))
    .map(lambda t: "".join(t)),  # unquoted, up to 40 digits each side
    st.tuples(_digits, st.integers(0, 8).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n)))
    .map(lambda t: _j(t[0] + ("." + t[1] if t[1] else ""))),  # quoted
)
_ws = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])
_ESCAPED_T = "\\u0074"  # a key spelled with an escape is the same key


@st.composite
def values(draw: st.DrawFn) -> bytes | None:
    """One message value: the five members (some dropped, duplicated, reordered or extra), as raw
    JSON text with random whitespace; or something that is not an object."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.sampled_from([b"[1, 2]", b'"x"', b"12", b"null", b"{not json", b"", b"\xff\xfe", b'{"amount": NaN}',
                                     b"{}", b'{"a":1} trailing', None]))
    members = [[n, draw(s)] for n, s in zip(NAMES, (_org, _record, _type, _time, _amount), strict=True)]
    if draw(st.integers(0, 4)) == 0:
        del members[draw(st.integers(0, 4))]
    if draw(st.integers(0, 3)) == 0:  # a duplicated key, with another value or the same
        k, v = members[draw(st.integers(0, len(members) - 1))]
        members.insert(draw(st.integers(0, len(members))), [k, draw(st.sampled_from([v, '"1000"', '"x"', "1"]))])
    if draw(st.integers(0, 5)) == 0:
        members.insert(draw(st.integers(0, len(members))), [draw(st.sampled_from(["extra", "nested"])),
                                                             draw(st.sampled_from(['{"a":1,"a":2}', "[1e400]", '"\\ud800"',
                                                                                   '{"b":{"c":"d"}}', "1.5"]))])
    if draw(st.booleans()):
        members = draw(st.permutations(members))
    w = draw(_ws)
    sep = draw(st.sampled_from([",", ", ", f"{w},{w}"]))
    colon = draw(st.sampled_from([":", ": ", f"{w}:{w}"]))
    body = sep.join(f"{_j(k) if draw(st.integers(0, 9)) else _j(k).replace('t', _ESCAPED_T)}{colon}{v}"
                    for k, v in members)
    return f"{draw(_ws)}{{{w}{body}{w}}}{draw(_ws)}".encode()


def _audit(vals: list[bytes | None], guard: str | None, layout: str = "list") -> pl.DataFrame:
    if layout == "newline":  # the native loop's layout: a large_binary array, each value followed by "\n"
        from engine.connectors.kafka.columns import parse_array  # (after the fix only)

        arr = pa.array([None if v is None else v + b"\n" for v in vals], pa.large_binary())
        parsed = parse_array(arr, EventFields().names(), newline=True)
    else:
        parsed = parse_values(vals, EventFields())
    n = len(vals)
    base = pl.DataFrame({
        "partition": pl.Series([0] * n, dtype=pl.Int32), "offset": pl.Series(range(n), dtype=pl.Int64),
        "ts_ms": pl.Series(range(n), dtype=pl.Int64), "ts_type": pl.Series([1] * n, dtype=pl.Int8),
        "key": pl.Series([None] * n, dtype=pl.Utf8), "org_header": pl.Series([ORG] * n, dtype=pl.Utf8),
        "producer_id": pl.Series(["1"] * n, dtype=pl.Utf8), "sequence": pl.Series([None] * n, dtype=pl.Int64),
    })
    frame = pl.concat([base, parsed], how="horizontal").with_columns(pl.lit(True).alias("in_window"))
    return forensics.prepare(Scan(frame=frame, topic="t"), guard)


def _consumer(vals: list[bytes | None], guard: str | None) -> dict[int, tuple[str, Any]]:
    msgs = [Message(topic="t", partition=0, offset=i, key=None, value=v, headers=[("org-id", ORG.encode())],
                    timestamp=(1, 1_785_578_400_000 + i), error=None) for i, v in enumerate(vals)]
    b = c.transform(msgs, c.FieldNames(), guard)
    out: dict[int, tuple[str, Any]] = {d.offset: (d.reason, d.detail) for d in b.dead}
    for m, line in zip(b.row_msgs, b.rows, strict=True):
        org, rec, typ, ts, amt = line.split("\t")[1:6]
        typ = re.sub(r"\\(.)", lambda g: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[g.group(1)], typ)  # COPY text
        out[m.offset()] = ("ok", (org, rec, typ, ts, Decimal(amt)))
    return out


_VERDICT = {"ok": "ok", "unparsable": "unparsable", "foreign_org": "foreign_org", "tombstone": "unparsable"}


def _agree(vals: list[bytes | None], guard: str | None, layout: str = "list") -> None:
    a = _audit(vals, guard, layout).rows(named=True)
    got = _consumer(vals, guard)
    for i, v in enumerate(vals):
        reason, what = got[i]
        verdict = _VERDICT.get(reason, "invalid")
        row = a[i]
        assert _VERDICT.get(row["status"], "invalid") == verdict, (v, row["status"], reason, what)
        if verdict == "ok":
            mine = (row["org_id"], row["record_id"], row["event_type"], row["event_time_c"], row["amount_d"])
            assert mine == what, (v, mine, what)


ISSUE = [  # the two reported cases, and the duplicated key
    b'{"org_id":"00D5g0000000001EAA","account_id":"0015g000000001xAAA","event_type":"purchase",'
    b'"event_ts":"2026-08-01T10:00:00.123Z","amount":123456789012.345678}',
    b'{"org_id":"00D5g0000000001EAA","account_id":"0015g000000001xAAA","event_type":"purchase",'
    b'"event_ts":"2026-08-01T10:00:00.123Z","amount":1234567890123456789.12}',
    b'{"org_id":"00D5g0000000001EAA","account_id":"0015g000000001xAAA","event_type":"purchase",'
    b'"event_ts":"2026-08-01T10:00:00.123Z","amount":"1","amount":"1000"}',
]


@pytest.fixture(params=["native", "newline", "regex"])
def shape_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The audit's column-wise split of producer-shape values: in C (values as the Python loop and
    as the native loop lay them out), or by the Polars regex."""
    if request.param == "regex":
        monkeypatch.setattr(native, "event_fields", lambda values, names: None, raising=False)
    return str(request.param)


@pytest.fixture(params=[True, False], ids=["fast", "per-message"])
def consumer_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    from engine.connectors.kafka.consumer import transformation

    monkeypatch.setattr(transformation, "_FAST_PATH", request.param)
    return bool(request.param)


@pytest.mark.parametrize("guard", [ORG, None])
def test_the_reported_cases(guard: str | None, shape_path: str, consumer_path: bool) -> None:
    _agree(ISSUE, guard, shape_path)
    a = _audit(ISSUE, guard, shape_path)
    assert a["amount_d"].to_list()[:2] == [Decimal("123456789012.345678"), Decimal("1234567890123456789.12")]
    assert a["status"].to_list() == ["ok", "ok", "unparsable"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vals=st.lists(values(), min_size=1, max_size=12), guard=st.sampled_from([ORG, None]))
@example(vals=ISSUE, guard=ORG)
def test_audit_and_consumer_agree_on_every_event(vals: list[bytes | None], guard: str | None, shape_path: str,
                                                  consumer_path: bool) -> None:
    _agree(vals, guard, shape_path)
