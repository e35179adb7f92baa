"""The audit over scan frames built by hand (no broker): occurrences, duplicates and conflicts held
against a plain-Python reference on random frames, whatever the row order or chunking."""

from __future__ import annotations

import random
from decimal import Decimal

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.connectors.kafka.scan import Scan
from engine.core import events, forensics

ORG = "00D8d00000RECONEA5"
IDS = ["0015g00000ABCDEAA5", "0015g00000ABCDFAA5", "0015g00000ABCDGAA5"]  # valid suffixes: the audit checks them


def _frame(rows: list[dict]) -> pl.DataFrame:
    n = len(rows)
    return pl.DataFrame({
        "partition": pl.Series([r["partition"] for r in rows], dtype=pl.Int32),
        "offset": pl.Series([r["offset"] for r in rows], dtype=pl.Int64),
        "ts_ms": pl.Series([r["ts_ms"] for r in rows], dtype=pl.Int64),
        "ts_type": pl.Series([1] * n, dtype=pl.Int8),
        "key": pl.Series([None] * n, dtype=pl.Utf8),
        "org_header": pl.Series([None] * n, dtype=pl.Utf8),
        "producer_id": pl.Series(["7"] * n, dtype=pl.Utf8),
        "sequence": pl.Series([None] * n, dtype=pl.Int64),
        "org_id": pl.Series([ORG] * n, dtype=pl.Utf8),
        "record_id": pl.Series([r["record_id"] for r in rows], dtype=pl.Utf8),
        "event_type": pl.Series([r["event_type"] for r in rows], dtype=pl.Utf8),
        "event_time": pl.Series([r["event_time"] for r in rows], dtype=pl.Utf8),
        "amount": pl.Series([r["amount"] for r in rows], dtype=pl.Utf8),
        "status": pl.Series([r.get("status", "ok") for r in rows], dtype=pl.Utf8),
        "in_window": pl.Series([True] * n, dtype=pl.Boolean),
    })


def _reference(rows: list[dict]) -> tuple[int, int, set[tuple[int, int]], set[tuple[int, int]]]:
    """Duplicates and conflicts by the contract's definition, in plain Python: the first copy of an
    event id (by timestamp, partition, offset) is the original; a later copy with the same amount is
    a duplicate, with another amount a conflict."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok":
            groups.setdefault((r["record_id"], r["event_type"], r["event_time"]), []).append(r)
    dups, confl = set(), set()
    for g in groups.values():
        g.sort(key=lambda r: (r["ts_ms"], r["partition"], r["offset"]))
        first = Decimal(g[0]["amount"].strip())
        for r in g[1:]:
            (dups if Decimal(r["amount"].strip()) == first else confl).add((r["partition"], r["offset"]))
    return len(dups), len(confl), dups, confl


rows_strategy = st.lists(st.tuples(st.sampled_from(IDS), st.sampled_from(["purchase", "refund"]),
                                   st.integers(0, 3), st.sampled_from(["1.00", "1.000000", "1.0", "2.50", "-3"]),
                                   st.integers(0, 2), st.integers(0, 5), st.booleans()),
                         min_size=0, max_size=60)


@settings(max_examples=150, deadline=None)
@given(rows_strategy, st.randoms(use_true_random=False), st.integers(1, 7))
def test_occurrences_match_the_reference(spec: list, rnd: random.Random, chunk: int) -> None:
    next_offset = [0, 0, 0]
    rows = []
    for rec, typ, sec, amount, part, ts, bad in spec:
        rows.append({"partition": part, "offset": next_offset[part], "ts_ms": ts, "record_id": rec,
                     "event_type": typ, "event_time": f"2026-08-01T10:00:0{sec}.000Z", "amount": amount,
                     "status": "unparsable" if bad and sec == 3 else "ok"})
        next_offset[part] += 1
    n_dup, n_conf, dups, confl = _reference(rows)
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    frame = _frame(shuffled)
    chunked = pl.concat([frame.slice(i, chunk) for i in range(0, max(1, len(frame)), chunk)], rechunk=False)
    for f in (frame, chunked):
        a = forensics.audit(Scan(frame=f, topic="t"), org_id=ORG)
        assert (a.duplicates, a.conflicts) == (n_dup, n_conf)
        got = a.frame.filter(pl.col("is_duplicate")).select("partition", "offset").rows()
        assert set(got) == dups
        assert set(a.frame.filter(pl.col("is_conflict")).select("partition", "offset").rows()) == confl


def test_windows_are_runs_of_adjacent_copies() -> None:
    rows = []
    for off in range(10):  # partition 0: originals 0-3, copies at 4-6 and 8; 7 and 9 are other events
        rec = IDS[0] if off < 7 or off == 8 else IDS[1]
        sec = off % 4 if off < 7 else (1 if off == 8 else off % 4)
        rows.append({"partition": 0, "offset": off, "ts_ms": off, "record_id": rec, "event_type": "purchase",
                     "event_time": f"2026-08-01T10:00:0{sec if rec == IDS[0] else 9 - (off == 9)}.000Z",
                     "amount": "1.00"})
    a = forensics.audit(Scan(frame=_frame(rows), topic="t"), org_id=ORG)
    assert [(w["partition"], w["first_offset"], w["last_offset"], w["events"]) for w in a.windows] == [
        (0, 4, 6, 3), (0, 8, 8, 1)]


@pytest.mark.parametrize(("text", "want"), [
    ("1.5", Decimal("1.5")), ("+2.25", Decimal("2.25")), ("-3", Decimal("-3")), ("007", Decimal("7")),
    ("1.500000", Decimal("1.5")), ("9" * 32 + ".999999", Decimal("9" * 32 + ".999999")),
    ("123456789012.345678", Decimal("123456789012.345678")),
    # not the one amount rule: invalid (null), never rounded, stripped or read as an exponent
    ("x", None), (None, None), ("", None), (" 2.25 ", None), ("\t-3\n", None), ("1e3", None), (".5", None),
    ("5.", None), ("12.3456789", None), ("1.5000000", None), ("1" * 33, None), ("1,5", None), ("\u0661", None),
])
def test_amounts_follow_the_one_rule(text: str | None, want: Decimal | None) -> None:
    got = events.amounts(pl.Series([text, "7"], dtype=pl.Utf8)).to_list()
    assert got == [want, Decimal("7")]
    assert (events.amount_text(text) is not None) == (want is not None)  # the consumer's per-value rule
