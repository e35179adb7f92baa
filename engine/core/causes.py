"""Root causes of re-delivered events: every cause once, and the attribution of each excess delivery
to the causes Kafka's own records give evidence for.

A finding class (:mod:`engine.core.classes`) says what a record's difference *is* (the warehouse
counted events twice); a cause says *why* the events were delivered twice, from the broker's
records: the warehouse group's commits and generations in ``__consumer_offsets`` (``rewinds``,
``rebalances``, ``history_coverage``), the offsets a ``read_committed`` read skips (``aborted``) and
the producer ids of the record batches (``producers``). Those are the ``recon kafka-audit --group``
JSON shapes (:class:`Evidence` reads them); this module does no I/O.

Two kinds of excess delivery are attributed:

* a *topic copy*: the same event id at two offsets of the topic (what forensics finds). Its cause
  is ``producer_replay`` when the copy and its original carry different producer ids (or an id of
  −1: idempotence was off, so a retry cannot be told from a replay — "as far as can be read"), and
  ``aborted_read_uncommitted`` when the original lies in an aborted range (the scan saw it, so it
  read uncommitted; a ``read_committed`` scan never sees aborted copies);
* a *redelivery* (a "virtual duplicate"): the topic holds the event once, but the warehouse's
  consumer read its offset twice — the group committed a lower offset than before (a rewind
  re-reads ``[to_offset, from_offset)``: ``offset_rewind``) or lost its partition before committing
  (a rebalance's uncommitted ``[from_offset, to_offset)``: ``redelivery_before_commit``). Each such
  event counts once per range holding it, and its amount inflates the warehouse exactly like a
  topic copy's (:func:`redeliveries` gives the rows forensics adds to its raw sums).

Ranges from committed offsets (rewinds, rebalances) are half-open, because a committed offset is
the *next* offset to read; ranges of records (aborted, producers) are inclusive.

A delivery no evidence explains is ``unknown``; so is every delivery whose window the group's commit
history does not cover, unless the topic itself (producer ids, aborted offsets) explains it. When
several causes hold for the same deliveries, each is listed with its share of the window's
deliveries, so the shares may add up to more than 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from engine.core import ids
from engine.core.events import iso_ms


@dataclass(frozen=True)
class Cause:
    """One cause. name: as in ``explain.json``; label: a few words; description: one paragraph for
    the report's "What happened" (what happened, and what evidence recon shows for it)."""

    name: str
    label: str
    description: str


CAUSES: tuple[Cause, ...] = (
    Cause("offset_rewind", "the warehouse's consumer group rewound its offsets",
          "The warehouse's consumer group committed an offset lower than one it had committed before (an offset "
          "reset, a restore from backup or a lost commit), so its consumer read the events between the two "
          "offsets a second time and applied them again. The evidence is the pair of commit records in "
          "__consumer_offsets for the group, topic and partition, the later one lower."),
    Cause("redelivery_before_commit", "events re-read after a rebalance before they were committed",
          "A consumer of the warehouse's group processed events and then crashed or lost its partition before it "
          "committed their offsets; the partition's next owner started from the last committed offset and applied "
          "the same events again. The evidence is the group's generation change (rebalance) in __consumer_offsets "
          "and the offsets between the last commit and the rebalance."),
    Cause("aborted_read_uncommitted", "a consumer applied events of an aborted transaction",
          "A transactional producer aborted a transaction, a consumer reading read_uncommitted (or a "
          "non-transactional one) applied the aborted events anyway, and the producer's retry delivered them "
          "again. The evidence is the offsets a read_uncommitted read returns and a read_committed read of the "
          "same range does not."),
    Cause("producer_replay", "the events were produced again by another producer",
          "The same events were produced a second time by a different producer: a replay job, or a producer "
          "restarted without its transactional id. The evidence is the same event id at two offsets under "
          "different producer ids. A producer id of -1 means idempotence was off, so a producer's own retry "
          "cannot be told from a replay; it is reported as a replay as far as the ids can be read."),
    Cause("unknown", "no evidence of the cause survives",
          "Kafka holds no record that explains these deliveries: the consumer group's commit history does not "
          "reach back to the window (__consumer_offsets is compacted), no group was given to read it, or "
          "nothing read matches."),
)

#: the kinds of evidence item, by the cause they support
EVIDENCE_KINDS = {"offset_rewind": "commit_record", "redelivery_before_commit": "generation",
                  "aborted_read_uncommitted": "aborted_offsets", "producer_replay": "producer_ids"}
#: the fields of an evidence item a manifest may record (where in Kafka it is; never a payload)
RANGE_FIELDS = ("kind", "topic", "partition", "from_offset", "to_offset")


def names() -> tuple[str, ...]:
    """Every cause name, in reporting order."""
    return tuple(c.name for c in CAUSES)


def get(name: str | None) -> Cause | None:
    return next((c for c in CAUSES if c.name == name), None)


def label(name: str) -> str:
    c = get(name)
    return c.label if c is not None else ""


UNKNOWN = "unknown"


# -- the evidence (the kafka-audit --group JSON shapes) ------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """What Kafka's own records say, as `recon kafka-audit --group` reports it. ``history_coverage``
    None: no group history was read at all (then no delivery's commit history is covered)."""

    rewinds: list[dict[str, Any]] = field(default_factory=list)
    rebalances: list[dict[str, Any]] = field(default_factory=list)
    history_coverage: dict[str, dict[str, Any]] | None = None
    aborted: list[dict[str, Any]] = field(default_factory=list)
    producers: list[dict[str, Any]] = field(default_factory=list)
    group: str | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Evidence:
        cov = doc.get("history_coverage")
        return cls(rewinds=list(doc.get("rewinds") or []), rebalances=list(doc.get("rebalances") or []),
                   history_coverage=None if cov is None else {str(k): dict(v) for k, v in cov.items()},
                   aborted=list(doc.get("aborted") or []), producers=list(doc.get("producers") or []),
                   group=doc.get("group"))

    def redelivery_ranges(self) -> list[dict[str, Any]]:
        """Every range the warehouse's consumer read twice, half-open ``[lo, hi)``, with its cause and
        its evidence item (without the topic, which the caller knows)."""
        out = []
        for r in self.rewinds:
            lo, hi = int(r["to_offset"]), int(r["from_offset"])
            if hi > lo:
                out.append({"cause": "offset_rewind", "partition": int(r["partition"]), "lo": lo, "hi": hi,
                            "evidence": {"kind": "commit_record", "partition": int(r["partition"]),
                                         "from_offset": hi, "to_offset": lo, "committed_at": r.get("committed_at")}})
        for b in self.rebalances:
            for u in b.get("uncommitted") or []:
                lo, hi = int(u["from_offset"]), int(u["to_offset"])
                if hi > lo:
                    out.append({"cause": "redelivery_before_commit", "partition": int(u["partition"]), "lo": lo,
                                "hi": hi, "evidence": {"kind": "generation", "partition": int(u["partition"]),
                                                       "from_offset": lo, "to_offset": hi,
                                                       "generation": b.get("generation"), "time": b.get("time")}})
        return out


def producers_from_headers(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """``producers[]`` runs read from the events' ``producer-id`` headers (a producer's own claim,
    marked ``source: "header"``), for when the record batches' producer ids could not be read:
    per partition, maximal runs of consecutive messages with the same integer header value."""
    if "producer_id" not in frame.columns or not len(frame):
        return []
    f = frame.select("partition", "offset", pl.col("producer_id").cast(pl.Int64, strict=False).alias("pid"),
                     "sequence").sort(["partition", "offset"])
    brk = ((pl.col("partition") != pl.col("partition").shift(1))
           | (pl.col("pid").fill_null(-2) != pl.col("pid").shift(1).fill_null(-2)))
    runs = f.with_columns(brk.fill_null(True).cum_sum().alias("run")).filter(pl.col("pid").is_not_null())
    agg = runs.group_by("run").agg(pl.col("partition").first(), pl.col("offset").min().alias("from_offset"),
                                   pl.col("offset").max().alias("to_offset"), pl.col("pid").first().alias("producer_id"),
                                   pl.col("sequence").first().alias("base_sequence")).sort(["partition", "from_offset"])
    return [{"partition": r["partition"], "from_offset": r["from_offset"], "to_offset": r["to_offset"],
             "producer_id": r["producer_id"], "producer_epoch": None, "base_sequence": r["base_sequence"],
             "source": "header"} for r in agg.iter_rows(named=True)]


# -- redeliveries ("virtual duplicates") ----------------------------------------------------------
def redeliveries(frame: pl.DataFrame, ev: Evidence) -> pl.DataFrame:
    """The valid events the warehouse's consumer read a second time: one row per (range, event in
    it), with the frame's columns plus ``cause`` and ``range`` (the index into
    :meth:`Evidence.redelivery_ranges`). Forensics counts each as one more delivered copy."""
    ranges = ev.redelivery_ranges()
    ok = frame.filter(pl.col("status") == "ok")
    parts = [ok.filter((pl.col("partition") == r["partition"]) & (pl.col("offset") >= r["lo"])
                       & (pl.col("offset") < r["hi"])).with_columns(pl.lit(r["cause"]).alias("cause"),
                                                                    pl.lit(i, pl.Int64).alias("range"))
             for i, r in enumerate(ranges)]
    if not parts:
        return ok.head(0).with_columns(pl.lit(None, pl.Utf8).alias("cause"), pl.lit(None, pl.Int64).alias("range"))
    return pl.concat(parts)


# -- attribution ----------------------------------------------------------------------------------
@dataclass
class Attribution:
    """windows: forensics' duplicate windows, each with ``causes``; redelivery_windows: runs of
    redelivered offsets outside those windows (same shape); totals: deliveries per cause;
    redelivered: :func:`redeliveries`; ranges: every evidence item's place in Kafka (for a manifest)."""

    windows: list[dict[str, Any]]
    redelivery_windows: list[dict[str, Any]]
    totals: dict[str, int]
    redelivered: pl.DataFrame
    ranges: list[dict[str, Any]]


def _lookup(points: pl.DataFrame, runs: list[dict[str, Any]], cols: list[str], prefix: str) -> pl.DataFrame:
    """``points`` (partition, offset) with the columns ``cols`` of the inclusive run holding each
    offset (null where none does), named ``prefix + col``."""
    if not runs:
        return points.with_columns(*(pl.lit(None).alias(prefix + c) for c in cols))
    r = pl.DataFrame([{"partition": int(x["partition"]), "from_offset": int(x["from_offset"]),
                       "to_offset": int(x["to_offset"]), **{c: x.get(c) for c in cols if c not in
                                                           ("partition", "from_offset", "to_offset")}} for x in runs],
                     infer_schema_length=None)
    r = r.with_columns(pl.col("partition").cast(pl.Int64), pl.col("from_offset").alias("_lo")).sort("_lo")
    p = points.with_columns(pl.col("partition").cast(pl.Int64).alias("_p"), pl.col("offset").alias("_o")).sort("_o")
    j = p.join_asof(r.rename({"partition": "_rp"}), left_on="_o", right_on="_lo", by_left="_p", by_right="_rp",
                    strategy="backward", check_sortedness=False)  # both sorted on the key just above
    hit = pl.col("_o") <= pl.col("to_offset")
    return j.select(*points.columns, *(pl.when(hit).then(pl.col(c)).alias(prefix + c) for c in cols))


def _copies(frame: pl.DataFrame) -> pl.DataFrame:
    """Each topic copy in the window (partition, offset, ts_ms) with its original (o_partition,
    o_offset): the copy of the same event id with occurrence 0."""
    cols = ("org_id", "record_id", "event_type", "event_time_c")
    v = frame.filter(pl.col("status") == "ok")
    dup = v.filter(pl.col("is_duplicate") & pl.col("in_window"))
    if not len(dup):
        return pl.DataFrame(schema={"partition": pl.Int64, "offset": pl.Int64, "ts_ms": pl.Int64,
                                    "o_partition": pl.Int64, "o_offset": pl.Int64})
    dup = dup.with_columns(ids.name_expr(*cols).alias("_n"))
    orig = v.filter((pl.col("occurrence") == 0) & pl.col("record_id").is_in(dup["record_id"].unique().implode()))
    orig = orig.with_columns(ids.name_expr(*cols).alias("_n")).select(
        "_n", pl.col("partition").cast(pl.Int64).alias("o_partition"), pl.col("offset").alias("o_offset"))
    return dup.select("_n", pl.col("partition").cast(pl.Int64), "offset", "ts_ms").join(
        orig, on="_n", how="left").drop("_n")


def _covered(ev: Evidence, partition: int, first_ts: str | None, last_ts: str | None) -> str | None:
    """None when the group's commit history covers the window's times on ``partition``; else why not."""
    if ev.history_coverage is None:
        return "no commit history of the warehouse's consumer group was read (--group, [kafka] group)"
    cov = ev.history_coverage.get(str(partition))
    if not cov or not cov.get("first_commit") or not cov.get("last_commit"):
        return f"the group's commit history has no commit for partition {partition}"
    try:
        a, b = _t(cov["first_commit"]), _t(cov["last_commit"])
        lo, hi = _t(first_ts), _t(last_ts)
    except (TypeError, ValueError):
        return f"the commit history's times for partition {partition} cannot be read"
    if a <= lo and b >= hi:
        return None
    return (f"the group's commit history for partition {partition} covers {cov['first_commit']} to "
            f"{cov['last_commit']}, not the whole window")


def _t(s: Any) -> datetime:
    return datetime.fromisoformat(str(s).replace("Z", "+00:00"))


def attribute(frame: pl.DataFrame, windows: list[dict[str, Any]], ev: Evidence, topic: str) -> Attribution:
    """Every excess delivery's causes, per window. ``frame``: forensics' audit frame (with
    ``occurrence``, ``is_duplicate``, ``event_time_c``); ``windows``: its duplicate windows."""
    # one row per (delivery, cause): d = delivery id, w = topic window index (or null)
    copies = _copies(frame).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("d"))
    pids = ["producer_id", "producer_epoch", "source"]
    copies = _lookup(copies, ev.producers, pids, "c_")
    orig = _lookup(copies.select("d", pl.col("o_partition").alias("partition"), pl.col("o_offset").alias("offset")),
                   ev.producers, pids, "o_")
    copies = copies.join(orig.select("d", *(f"o_{c}" for c in pids)), on="d", how="left")
    ab = _lookup(copies.select("d", pl.col("o_partition").alias("partition"), pl.col("o_offset").alias("offset")),
                 [{**a, "aborted_index": i} for i, a in enumerate(ev.aborted)], ["aborted_index"], "")
    copies = copies.join(ab.select("d", "aborted_index"), on="d", how="left")
    known = pl.col("c_producer_id").is_not_null() & pl.col("o_producer_id").is_not_null()
    replay = known & ((pl.col("c_producer_id") != pl.col("o_producer_id")) | (pl.col("c_producer_id") == -1)
                      | (pl.col("o_producer_id") == -1))
    copies = copies.with_columns(replay.fill_null(False).alias("replay"))
    red = redeliveries(frame, ev)
    n_copies = len(copies)
    red_d = red.select(pl.col("partition").cast(pl.Int64), "offset", "ts_ms", "cause", "range").with_columns(
        (pl.int_range(pl.len(), dtype=pl.Int64) + n_copies).alias("d"))
    win_of = _window_index(windows)
    copies = win_of(copies)
    red_d = win_of(red_d)
    ranges = ev.redelivery_ranges()

    out_windows = []
    for i, w in enumerate(windows):
        c = copies.filter(pl.col("w") == i)
        r = red_d.filter(pl.col("w") == i)
        out_windows.append({**w, "causes": _window_causes(c, r, ev, topic, ranges, w)})
    outside = red_d.filter(pl.col("w").is_null())
    red_windows = []
    for run in _runs(frame, outside):
        r = outside.filter((pl.col("partition") == run["partition"]) & (pl.col("offset") >= run["first_offset"])
                           & (pl.col("offset") <= run["last_offset"]))
        run["causes"] = _window_causes(copies.head(0), r, ev, topic, ranges, run)
        red_windows.append(run)
    totals: dict[str, int] = {}
    for w in (*out_windows, *red_windows):
        for c in w["causes"]:
            totals[c["cause"]] = totals.get(c["cause"], 0) + c["events"]
    places = []
    for w in (*out_windows, *red_windows):
        for c in w["causes"]:
            for e in c["evidence"]:
                places.append({k: e[k] for k in RANGE_FIELDS if k in e})
                o = e.get("original")
                if isinstance(o, dict):
                    places.append({"kind": e["kind"], "topic": e["topic"], **{k: o[k] for k in RANGE_FIELDS[2:]}})
    uniq = list({tuple(sorted(p.items())): p for p in places}.values())
    return Attribution(out_windows, red_windows, {n: totals[n] for n in names() if n in totals}, red, uniq)


def _window_index(windows: list[dict[str, Any]]) -> Any:
    """A function adding ``w``: the index of the topic window holding each (partition, offset)."""
    wf = pl.DataFrame({"_wp": [int(w["partition"]) for w in windows], "_lo": [int(w["first_offset"]) for w in windows],
                       "_hi": [int(w["last_offset"]) for w in windows], "w": list(range(len(windows)))},
                      schema={"_wp": pl.Int64, "_lo": pl.Int64, "_hi": pl.Int64, "w": pl.Int64}).sort("_lo")

    def add(df: pl.DataFrame) -> pl.DataFrame:
        if not len(windows) or not len(df):
            return df.with_columns(pl.lit(None, pl.Int64).alias("w"))
        j = df.with_columns(pl.col("offset").cast(pl.Int64).alias("_o")).sort("_o").join_asof(
            wf, left_on="_o", right_on="_lo", by_left="partition", by_right="_wp", strategy="backward",
            check_sortedness=False)  # both sorted on the key
        return j.with_columns(pl.when(pl.col("_o") <= pl.col("_hi")).then(pl.col("w")).alias("w")).drop("_o", "_lo",
                                                                                                       "_hi")
    return add


def _runs(frame: pl.DataFrame, red: pl.DataFrame) -> list[dict[str, Any]]:
    """Maximal runs of redelivered offsets per partition, not interrupted by any other message of
    the frame (as forensics' windows are)."""
    if not len(red):
        return []
    pts = red.select("partition", "offset").unique()
    f = frame.select(pl.col("partition").cast(pl.Int64), "offset", "ts_ms").sort(["partition", "offset"]).with_columns(
        pl.int_range(pl.len()).alias("pos"))
    d = f.join(pts, on=["partition", "offset"], how="semi").sort("pos")
    brk = (pl.col("partition") != pl.col("partition").shift(1)) | (pl.col("pos") != pl.col("pos").shift(1) + 1)
    runs = d.with_columns(brk.fill_null(True).cum_sum().alias("run")).group_by("run").agg(
        pl.col("partition").first(), pl.col("offset").min().alias("first_offset"),
        pl.col("offset").max().alias("last_offset"), pl.col("ts_ms").min().alias("a"),
        pl.col("ts_ms").max().alias("b")).sort(["partition", "first_offset"])
    out = []
    for r in runs.iter_rows(named=True):
        n = red.filter((pl.col("partition") == r["partition"]) & (pl.col("offset") >= r["first_offset"])
                       & (pl.col("offset") <= r["last_offset"])).height
        out.append({"partition": r["partition"], "first_offset": r["first_offset"], "last_offset": r["last_offset"],
                    "first_ts": iso_ms(r["a"]), "last_ts": iso_ms(r["b"]), "events": n})
    return out


def _window_causes(c: pl.DataFrame, r: pl.DataFrame, ev: Evidence, topic: str, ranges: list[dict[str, Any]],
                   w: dict[str, Any]) -> list[dict[str, Any]]:
    """The causes of one window's deliveries: topic copies ``c`` and redeliveries ``r``."""
    total = len(c) + len(r)
    if not total:
        return []
    found: dict[str, tuple[int, list[dict[str, Any]]]] = {}
    rep = c.filter(pl.col("replay"))
    if len(rep):
        found["producer_replay"] = (len(rep), _producer_evidence(rep, topic))
    abd = c.filter(pl.col("aborted_index").is_not_null())
    if len(abd):
        idx = sorted(set(abd["aborted_index"].to_list()))
        found["aborted_read_uncommitted"] = (len(abd), [
            {"kind": "aborted_offsets", "topic": topic, "partition": int(ev.aborted[i]["partition"]),
             "from_offset": int(ev.aborted[i]["from_offset"]), "to_offset": int(ev.aborted[i]["to_offset"]),
             "events": ev.aborted[i].get("events")} for i in idx])
    for cause in ("offset_rewind", "redelivery_before_commit"):
        rc = r.filter(pl.col("cause") == cause)
        if len(rc):
            found[cause] = (len(rc), [{**ranges[i]["evidence"], "topic": topic}
                                      for i in sorted(set(rc["range"].to_list()))])
    explained = c.filter(pl.col("replay") | pl.col("aborted_index").is_not_null())
    n_unknown = len(c) - len(explained)
    out = []
    for name in names():
        if name in found:
            n, evidence = found[name]
            out.append({"cause": name, "events": n, "share": round(n / total, 4), "evidence": evidence})
    if n_unknown:
        why = _covered(ev, int(w["partition"]), w.get("first_ts"), w.get("last_ts")) or "no evidence matches"
        out.append({"cause": UNKNOWN, "events": n_unknown, "share": round(n_unknown / total, 4), "evidence": [],
                    "reason": why})
    return out


def _producer_evidence(rep: pl.DataFrame, topic: str) -> list[dict[str, Any]]:
    """One item per (copy partition, copy producer, original partition, original producer): the copies'
    and the originals' offset ranges and the copies' times."""
    g = rep.group_by("partition", "c_producer_id", "c_producer_epoch", "c_source", "o_partition", "o_producer_id",
                     "o_producer_epoch").agg(
        pl.col("offset").min().alias("a"), pl.col("offset").max().alias("b"), pl.col("o_offset").min().alias("oa"),
        pl.col("o_offset").max().alias("ob"), pl.col("ts_ms").min().alias("ta"), pl.col("ts_ms").max().alias("tb"),
        pl.len().alias("n")).sort("partition", "a")
    out = []
    for x in g.iter_rows(named=True):
        readable = x["c_producer_id"] != -1 and x["o_producer_id"] != -1
        out.append({"kind": "producer_ids", "topic": topic, "partition": x["partition"], "from_offset": x["a"],
                    "to_offset": x["b"], "first_ts": iso_ms(x["ta"]), "last_ts": iso_ms(x["tb"]), "events": x["n"],
                    "producer_id": x["c_producer_id"], "producer_epoch": x["c_producer_epoch"],
                    "original": {"partition": x["o_partition"], "from_offset": x["oa"], "to_offset": x["ob"],
                                 "producer_id": x["o_producer_id"], "producer_epoch": x["o_producer_epoch"]},
                    "as_far_as_can_be_read": not readable, "source": x["c_source"] or "record_batch"})
    return out
