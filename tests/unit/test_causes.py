"""Root-cause attribution over hand-built audit frames (no broker): each cause alone, overlaps with
their shares, coverage gaps, and a redelivery ("virtual duplicate") that explains a mismatch's
amount exactly as a copy in the topic would."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import polars as pl

from engine.connectors.kafka.scan import Scan
from engine.core import causes, forensics

ORG = "00D8d00000RECONEA5"
A, B, C = "0015g00000ABCDEAA5", "0015g00000ABCDFAA5", "0015g00000ABCDGAA5"
TOPIC = "clv-events"


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    n = len(rows)
    return pl.DataFrame({
        "partition": pl.Series([r["partition"] for r in rows], dtype=pl.Int32),
        "offset": pl.Series([r["offset"] for r in rows], dtype=pl.Int64),
        "ts_ms": pl.Series([r["ts_ms"] for r in rows], dtype=pl.Int64),
        "ts_type": pl.Series([1] * n, dtype=pl.Int8),
        "key": pl.Series([None] * n, dtype=pl.Utf8),
        "org_header": pl.Series([None] * n, dtype=pl.Utf8),
        "producer_id": pl.Series([r.get("pid") for r in rows], dtype=pl.Utf8),
        "sequence": pl.Series([None] * n, dtype=pl.Int64),
        "org_id": pl.Series([ORG] * n, dtype=pl.Utf8),
        "record_id": pl.Series([r["record_id"] for r in rows], dtype=pl.Utf8),
        "event_type": pl.Series(["purchase"] * n, dtype=pl.Utf8),
        "event_time": pl.Series([r["event_time"] for r in rows], dtype=pl.Utf8),
        "amount": pl.Series([r["amount"] for r in rows], dtype=pl.Utf8),
        "status": pl.Series(["ok"] * n, dtype=pl.Utf8),
        "in_window": pl.Series([True] * n, dtype=pl.Boolean),
    })


T0 = 1_780_000_000_000  # 2026-05-28T20:26:40Z


def _ev(offset: int, rec: str, sec: int, amount: str, pid: str | None = "1", partition: int = 0,
        ts: int | None = None) -> dict[str, Any]:
    return {"partition": partition, "offset": offset, "ts_ms": T0 + (ts if ts is not None else offset),
            "record_id": rec, "event_time": f"2026-08-01T10:00:{sec:02d}.000Z", "amount": amount, "pid": pid}


#: p0: four originals (A 10, B 20, A 30, C 40), then copies of offsets 1 and 2 (B 20, A 30)
BASE = [_ev(0, A, 0, "10.00"), _ev(1, B, 1, "20.00"), _ev(2, A, 2, "30.00"), _ev(3, C, 3, "40.00")]
REPLAYED = [*BASE, _ev(4, B, 1, "20.00", pid="2"), _ev(5, A, 2, "30.00", pid="2")]


def _audit(rows: list[dict[str, Any]]) -> forensics.Audit:
    return forensics.audit(Scan(frame=_frame(rows), topic=TOPIC))


def _attr(rows: list[dict[str, Any]], **evidence: Any) -> causes.Attribution:
    a = _audit(rows)
    return causes.attribute(a.frame, a.windows, causes.Evidence.from_dict(evidence), TOPIC)


def _causes(w: dict[str, Any]) -> list[tuple[str, int, float]]:
    return [(c["cause"], c["events"], c["share"]) for c in w["causes"]]


PRODUCERS = [{"partition": 0, "from_offset": 0, "to_offset": 3, "producer_id": 1000, "producer_epoch": 0,
              "base_sequence": 0},
             {"partition": 0, "from_offset": 4, "to_offset": 5, "producer_id": 2000, "producer_epoch": 0,
              "base_sequence": 0}]


def test_every_cause_is_listed_once_with_a_label_and_a_paragraph() -> None:
    assert causes.names() == ("offset_rewind", "redelivery_before_commit", "aborted_read_uncommitted",
                              "producer_replay", "unknown")
    assert all(c.label and len(c.description) > 100 for c in causes.CAUSES)


def test_producer_replay_alone_names_both_producer_ids_and_offsets() -> None:
    at = _attr(REPLAYED, producers=PRODUCERS, history_coverage={})
    (w,) = at.windows
    assert (w["first_offset"], w["last_offset"], w["events"]) == (4, 5, 2)
    assert _causes(w) == [("producer_replay", 2, 1.0)]
    (e,) = w["causes"][0]["evidence"]
    assert (e["kind"], e["topic"], e["partition"], e["from_offset"], e["to_offset"], e["producer_id"]) == \
        ("producer_ids", TOPIC, 0, 4, 5, 2000)
    assert e["original"] == {"partition": 0, "from_offset": 1, "to_offset": 2, "producer_id": 1000,
                             "producer_epoch": 0}
    assert e["as_far_as_can_be_read"] is False and e["first_ts"] == "2026-05-28T20:26:40.004Z"
    assert at.totals == {"producer_replay": 2} and at.redelivery_windows == []


def test_producer_id_minus_one_is_a_replay_as_far_as_can_be_read() -> None:
    runs = [{**p, "producer_id": -1, "producer_epoch": -1} for p in PRODUCERS]
    (w,) = _attr(REPLAYED, producers=runs).windows
    assert _causes(w) == [("producer_replay", 2, 1.0)]
    assert w["causes"][0]["evidence"][0]["as_far_as_can_be_read"] is True


def test_the_same_producer_is_no_replay_and_without_history_the_cause_is_unknown() -> None:
    runs = [{**PRODUCERS[0], "to_offset": 5}]
    (w,) = _attr(REPLAYED, producers=runs).windows
    assert _causes(w) == [("unknown", 2, 1.0)]
    assert "no commit history" in w["causes"][0]["reason"]


def test_header_producer_ids_are_evidence_marked_as_headers() -> None:
    a = _audit(REPLAYED)
    runs = causes.producers_from_headers(a.frame)
    assert [(r["partition"], r["from_offset"], r["to_offset"], r["producer_id"], r["source"]) for r in runs] == \
        [(0, 0, 3, 1, "header"), (0, 4, 5, 2, "header")]
    (w,) = causes.attribute(a.frame, a.windows, causes.Evidence(producers=runs), TOPIC).windows
    assert _causes(w) == [("producer_replay", 2, 1.0)] and w["causes"][0]["evidence"][0]["source"] == "header"


def test_aborted_original_is_aborted_read_uncommitted() -> None:
    at = _attr(REPLAYED, aborted=[{"partition": 0, "from_offset": 1, "to_offset": 2, "events": 2}])
    (w,) = at.windows
    assert _causes(w) == [("aborted_read_uncommitted", 2, 1.0)]
    assert w["causes"][0]["evidence"] == [{"kind": "aborted_offsets", "topic": TOPIC, "partition": 0,
                                           "from_offset": 1, "to_offset": 2, "events": 2}]


def test_an_aborted_range_elsewhere_explains_nothing() -> None:
    (w,) = _attr(REPLAYED, aborted=[{"partition": 0, "from_offset": 3, "to_offset": 3, "events": 1},
                                    {"partition": 1, "from_offset": 1, "to_offset": 2, "events": 2}]).windows
    assert _causes(w)[0][0] == "unknown"


def test_offset_rewind_alone_is_a_redelivery_window_with_the_commit_records() -> None:
    rw = [{"partition": 0, "from_offset": 4, "to_offset": 1, "committed_at": "2026-05-28T21:00:00Z",
           "events_redelivered": 3}]
    at = _attr(BASE, rewinds=rw, history_coverage={"0": {"first_commit": "2026-05-28T20:00:00Z",
                                                         "last_commit": "2026-05-28T22:00:00Z"}})
    assert at.windows == []
    (w,) = at.redelivery_windows
    assert (w["partition"], w["first_offset"], w["last_offset"], w["events"]) == (0, 1, 3, 3)
    assert _causes(w) == [("offset_rewind", 3, 1.0)]
    assert w["causes"][0]["evidence"] == [{"kind": "commit_record", "topic": TOPIC, "partition": 0,
                                           "from_offset": 4, "to_offset": 1,
                                           "committed_at": "2026-05-28T21:00:00Z"}]
    assert sorted(at.redelivered["offset"].to_list()) == [1, 2, 3]  # [to, from): offset 4 is not re-read


def test_rebalance_alone_is_redelivery_before_commit_with_its_generation() -> None:
    rb = [{"generation": 7, "time": "2026-05-28T21:00:00Z",
           "uncommitted": [{"partition": 0, "from_offset": 2, "to_offset": 4}]}]
    at = _attr(BASE, rebalances=rb)
    (w,) = at.redelivery_windows
    assert (w["first_offset"], w["last_offset"]) == (2, 3) and _causes(w) == [("redelivery_before_commit", 2, 1.0)]
    (e,) = w["causes"][0]["evidence"]
    assert (e["kind"], e["generation"], e["from_offset"], e["to_offset"], e["time"]) == \
        ("generation", 7, 2, 4, "2026-05-28T21:00:00Z")
    assert at.totals == {"redelivery_before_commit": 2}


def test_overlapping_causes_are_each_listed_with_their_share() -> None:
    # the replayed copies (offsets 4, 5) were also re-read by a rewind from 6 to 5 (offset 5 only),
    # and offset 1 (an original of a copy) was in an aborted transaction
    rw = [{"partition": 0, "from_offset": 6, "to_offset": 5, "committed_at": "2026-05-28T21:00:00Z"}]
    ab = [{"partition": 0, "from_offset": 1, "to_offset": 1, "events": 1}]
    at = _attr(REPLAYED, producers=PRODUCERS, rewinds=rw, aborted=ab)
    (w,) = at.windows
    # three deliveries in the window: two topic copies and one re-read of offset 5
    assert _causes(w) == [("offset_rewind", 1, 0.3333), ("aborted_read_uncommitted", 1, 0.3333),
                          ("producer_replay", 2, 0.6667)]
    assert at.redelivery_windows == []  # the re-read lies inside the topic window
    assert at.totals == {"offset_rewind": 1, "aborted_read_uncommitted": 1, "producer_replay": 2}


def test_partly_explained_window_gives_the_rest_to_unknown() -> None:
    ab = [{"partition": 0, "from_offset": 1, "to_offset": 1, "events": 1}]
    (w,) = _attr(REPLAYED, aborted=ab, history_coverage={}).windows
    assert _causes(w) == [("aborted_read_uncommitted", 1, 0.5), ("unknown", 1, 0.5)]


def test_coverage_gap_gives_unknown_with_the_reason_and_covered_windows_say_no_evidence_matches() -> None:
    inside = {"0": {"first_commit": "2026-05-28T20:00:00Z", "last_commit": "2026-05-28T22:00:00Z"}}
    late = {"0": {"first_commit": "2026-05-28T20:26:40.005Z", "last_commit": "2026-05-28T22:00:00Z"}}
    (w,) = _attr(REPLAYED, history_coverage=late).windows
    assert _causes(w) == [("unknown", 2, 1.0)] and "not the whole window" in w["causes"][0]["reason"]
    (w,) = _attr(REPLAYED, history_coverage={"1": inside["0"]}).windows
    assert "no commit for partition 0" in w["causes"][0]["reason"]
    (w,) = _attr(REPLAYED, history_coverage=inside).windows
    assert _causes(w) == [("unknown", 2, 1.0)] and w["causes"][0]["reason"] == "no evidence matches"


def test_evidence_places_are_topic_partition_and_offsets_only() -> None:
    rw = [{"partition": 0, "from_offset": 4, "to_offset": 1, "committed_at": "2026-05-28T21:00:00Z"}]
    at = _attr(REPLAYED, producers=PRODUCERS, rewinds=rw)
    assert sorted(tuple(p.values()) for p in at.ranges) == sorted([
        ("commit_record", TOPIC, 0, 4, 1), ("producer_ids", TOPIC, 0, 4, 5), ("producer_ids", TOPIC, 0, 1, 2)])
    assert all(set(p) == set(causes.RANGE_FIELDS) for p in at.ranges)


def test_a_redelivery_explains_a_mismatch_amount_exactly() -> None:
    """B's event (20.00) at offset 1 and A's (30.00) at offset 2 were re-read by a rewind: the
    warehouse holds A 70 = 10 + 30 + 30 and B 40. Without the redelivery nothing explains them; with
    it both are duplicate_inflation and the overpayment is the rate times the re-read amounts."""
    rw = [{"partition": 0, "from_offset": 3, "to_offset": 1, "committed_at": "2026-05-28T21:00:00Z"}]
    a = _audit(BASE)
    ev = causes.Evidence.from_dict({"rewinds": rw})
    red = causes.redeliveries(a.frame, ev)
    diffs = pl.DataFrame({"key": [A, B], "kind": ["mismatched"] * 2, "column": ["clv"] * 2,
                          "source_value": ["40.00", "20.00"], "target_value": ["70.00", "40.00"]})
    attrs = pl.DataFrame({"Id": [A, B], "owner": ["005A", "005B"], "commission_rate": ["0.10", "0.05"],
                          "rank_by": ["1", "2"], "modstamp": [None, None], "amount": ["40.00", "20.00"]})

    def explain(stream: pl.DataFrame) -> dict[str, dict[str, Any]]:
        exp = forensics.triangulate(diffs, "clv", stream, attrs, sec_ids=set(), default_rate=Decimal("0.05"))
        return {r["Id"]: r for r in exp.findings.iter_rows(named=True)}

    before = explain(forensics.recompute(a))
    assert {k: v["class"] for k, v in before.items()} == {A: "warehouse_only_drift", B: "warehouse_only_drift"}
    after = explain(forensics.recompute(a, red))
    assert {k: v["class"] for k, v in after.items()} == {A: "duplicate_inflation", B: "duplicate_inflation"}
    assert (after[A]["r"], after[A]["d"], after[B]["r"]) == (Decimal("70.00"), Decimal("40.00"), Decimal("40.00"))
    assert (after[A]["overpayment"], after[B]["overpayment"]) == (Decimal("3.00"), Decimal("1.00"))
    assert sorted(after[A]["copy_offsets"]) == ["0:2"] and after[A]["duplicate_copies"] == 1


# -- the report's "What happened" and the manifest ----------------------------------------------
def _report(at: causes.Attribution) -> str:
    from dataclasses import replace

    from engine.report import html as rh
    from tests.unit.test_report_html import full_inputs

    inp = full_inputs()
    kafka = {**(inp.explain or {}).get("kafka", {}), "windows": at.windows, "redelivery_windows": at.redelivery_windows}
    return rh.build_html(replace(inp, explain={**(inp.explain or {}), "kafka": kafka}))


def _paragraphs(page: str) -> dict[str, str]:
    import html
    import re

    happened = page[page.index("<h2>What happened</h2>"):]
    happened = happened[:happened.index("</section>")]
    return {m.group(1): html.unescape(re.sub(r"<[^>]+>", "", m.group(2)))
            for m in re.finditer(r'<p class="cause" data-cause="([^"]+)"[^>]*>(.*?)</p>', happened)}


def test_what_happened_states_each_cause_in_one_paragraph_with_counts_offsets_and_times() -> None:
    rw = [{"partition": 0, "from_offset": 4, "to_offset": 1, "committed_at": "2026-05-28T21:00:00Z"}]
    runs = [*PRODUCERS[:1], {**PRODUCERS[1], "producer_id": -1}]
    paras = _paragraphs(_report(_attr([*REPLAYED, _ev(6, C, 9, "5.00", partition=1, ts=9)] + [
        _ev(7, C, 9, "5.00", partition=1, ts=10)], producers=runs, rewinds=rw, history_coverage={})))
    assert list(paras) == ["offset_rewind", "producer_replay", "unknown"]  # in the causes' order, once each
    rewind, replay, unknown = paras["offset_rewind"], paras["producer_replay"], paras["unknown"]
    assert causes.get("offset_rewind").description in rewind  # type: ignore[union-attr]
    assert "3 deliveries in 1 window(s): partition 0 offsets 1–3 (2026-05-28 20:26:40 UTC to 2026-05-28 20:26:40 UTC)" \
        in rewind
    assert "the group's commit on partition 0 went from offset 4 back to 1 at 2026-05-28 21:00:00 UTC" in rewind
    assert causes.get("producer_replay").description in replay  # type: ignore[union-attr]
    assert "2 deliveries in 1 window(s): partition 0 offsets 4–5" in replay
    assert ("producer id -1 wrote partition 0 offsets 4–5, copies of partition 0 offsets 1–2 written by producer "
            "id 1000 (as far as can be read") in replay
    assert "1 delivery in 1 window(s): partition 1 offset 7" in unknown
    assert "Why unknown: the group's commit history has no commit for partition 1." in unknown


def test_what_happened_has_no_cause_paragraph_without_causes_and_escapes_what_it_shows() -> None:
    assert _paragraphs(_report(causes.Attribution([], [], {}, pl.DataFrame(), []))) == {}
    w = {"partition": 0, "first_offset": 1, "last_offset": 1, "first_ts": None, "last_ts": None, "events": 1,
         "causes": [{"cause": "unknown", "events": 1, "share": 1.0, "evidence": [], "reason": "<script>x</script>"}]}
    page = _report(causes.Attribution([w], [], {}, pl.DataFrame(), []))
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_the_manifest_input_records_where_the_evidence_lies_and_nothing_else() -> None:
    from engine.evidence import manifest as mf

    rw = [{"partition": 0, "from_offset": 4, "to_offset": 1, "committed_at": "2026-05-28T21:00:00Z"}]
    at = _attr(REPLAYED, producers=PRODUCERS, rewinds=rw)
    leaky = [{**p, "events": 9, "producer_id": 7, "payload": '{"amount": "1.00"}', "original": {"x": 1}}
             for p in at.ranges]
    inp = mf.describe_input("stream", {"system": "kafka", "bootstrap": "b:9092", "topic": TOPIC, "events": 6,
                                       "group": "warehouse", "root_cause": leaky, "sasl.password": "pw"})
    assert inp == {"side": "stream", "system": "kafka", "bootstrap": "b:9092", "topic": TOPIC, "events": 6,
                   "group": "warehouse", "root_cause": at.ranges}
    assert sorted((r["kind"], r["partition"], r["from_offset"], r["to_offset"]) for r in inp["root_cause"]) == \
        [("commit_record", 0, 4, 1), ("producer_ids", 0, 1, 2), ("producer_ids", 0, 4, 5)]


def test_explain_in_the_terminal_names_each_windows_causes() -> None:
    import io

    from rich.console import Console

    from engine.report.terminal import render_explain

    rw = [{"partition": 0, "from_offset": 3, "to_offset": 1, "committed_at": "2026-05-28T21:00:00Z"}]
    at = _attr(REPLAYED, producers=PRODUCERS, rewinds=rw)
    buf = io.StringIO()
    render_explain(Console(file=buf, width=300), {
        "classes": {}, "exposure": {"total": "0.00", "underpayment_total": "0.00", "by_owner": {}},
        "sec_critical": {"records": 0, "overpayment": "0.00"},
        "kafka": {"windows": at.windows, "redelivery_windows": at.redelivery_windows}}, None)
    lines = buf.getvalue().splitlines()
    assert "re-delivered: partition 0 offsets 4–5 (2 copies, 2026-05-28T20:26:40.004Z … 2026-05-28T20:26:40.005Z); " \
           "causes: producer_replay 2" in lines
    assert any(x.startswith("re-read by the warehouse: partition 0 offsets 1–2 (2 copies") and
               x.endswith("causes: offset_rewind 2") for x in lines)
