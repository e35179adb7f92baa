"""The incident as data: Salesforce, the Kafka topic and the warehouse after a maintenance window
in which exactly-once delivery was off.

Deterministic by seed. What happens, per partition of `clv-events`:

* the producer (producer id 1) sends every purchase/refund event in event-time order, with a
  `sequence` header counting per partition;
* during the maintenance window (an event-time interval sized so that about 15% of accounts have
  an event in it) the upgrade interrupts it; the restarted producer (producer id 2) re-sends the
  whole window's block again: a contiguous block of copies carrying the *original* sequence numbers
  (the sequence regresses: the replay is visible), then carries on with the rest of the stream;
* a few accounts lose their window events instead (never delivered: `missing_events`).

That is the default cause, ``replay``; ``--cause`` makes the same window's duplicates another way
(an offset rewind, a redelivery before commit, an aborted transaction read uncommitted, or a mix),
with a real consumer group feeding the warehouse: :mod:`engine.local.causes`.

The warehouse summed what was delivered (`warehouse.clv_events`, `warehouse.customer_clv`), so it
is inflated for the duplicated accounts. A few accounts of every other class are planted too: a
stale Salesforce value (`stale_salesforce`), a manual warehouse patch (`warehouse_only_drift`) and
an account whose warehouse row is gone (`missing_in_warehouse`).

The generator records what it injected directly (class per account, every copy with its offset
from the broker's delivery report, the windows) in a ground-truth file. It never calls recon's
detection code, so tests can hold recon against it. Event ids come from `engine.core.ids`, the one
function the scenario, forensics and the consumer share.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from engine.core.classes import explained as explained_classes
from engine.core.errors import UsageError
from engine.core.ids import event_ids
from engine.local.causes import CAUSE_NAMES, CAUSES, MIXED, group_name, partition_causes

TOPIC = "clv-events"
PARTITIONS = 3
N_OWNERS = 400
DUPLICATE_FRACTION = 0.15
EPOCH = datetime(2026, 8, 1, tzinfo=UTC)
SPAN_DAYS = 60
PRODUCER_ORIGINAL = "1001"
PRODUCER_REPLAY = "1002"
#: the classes the scenario plants: every class a rule recognises (engine.core.classes), in its order
CLASSES = explained_classes()


@dataclass(frozen=True)
class ScenarioSpec:
    """What to generate.

    accounts: number of Salesforce Accounts (each gets 2+ events).
    seed: everything (ids excepted, which are sequential) derives from it.
    partitions: partitions of the topic.
    duplicate_fraction: share of accounts with at least one event in the maintenance window.
    special_per_class: accounts planted in each non-duplicate class (default max(3, accounts // 1000)).
    """

    accounts: int = 20_000
    seed: int = 7
    partitions: int = PARTITIONS
    duplicate_fraction: float = DUPLICATE_FRACTION
    special_per_class: int | None = None
    topic: str = TOPIC
    #: how the window's duplicates come about (engine.local.causes); "replay" is the original incident
    cause: str = "replay"

    @property
    def n_special(self) -> int:
        return self.special_per_class if self.special_per_class is not None else max(3, self.accounts // 1000)


@dataclass
class Scenario:
    """The generated data, before it is written anywhere."""

    spec: ScenarioSpec
    org_id: str
    users: pl.DataFrame
    accounts: pl.DataFrame  # Salesforce view + truth columns
    events: pl.DataFrame  # every generated event (lost ones included), with its delivery plan
    messages: pl.DataFrame  # what is produced to Kafka, in per-partition order (copies included)
    window: tuple[int, int]  # maintenance window, event time in ms since epoch
    truth: dict[str, Any] = field(default_factory=dict)


def generate(spec: ScenarioSpec, org_id: str, owner_ids: list[str] | None = None) -> Scenario:
    """Build the whole incident in memory (columnar, no per-row Python except JSON encoding later)."""
    from engine.core.sfid import make_ids

    if spec.accounts < 50:
        raise ValueError("the scenario needs at least 50 accounts")
    rng = np.random.default_rng(spec.seed)
    n = spec.accounts
    owners = owner_ids or make_ids("005", 1000, N_OWNERS)
    users = pl.DataFrame({
        "Id": owners,
        "FirstName": ["Account"] * len(owners),
        "LastName": [f"Executive {i:03d}" for i in range(len(owners))],
        "Name": [f"Account Executive {i:03d}" for i in range(len(owners))],
        "Username": [f"ae{i:03d}@example.com" for i in range(len(owners))],
        "Email": [f"ae{i:03d}@example.com" for i in range(len(owners))],
        "Alias": [f"ae{i:03d}" for i in range(len(owners))],
        "Title": ["Account Executive"] * len(owners),
        "IsActive": [True] * len(owners),
    })
    acc_ids = make_ids("001", 10_000, n)
    revenue = np.round(rng.lognormal(14, 1.4, n), 2)
    rate = np.round(rng.uniform(0.02, 0.10, n), 4)
    owner_idx = rng.integers(0, len(owners), n)

    # events: 2 + Poisson(3) per account, purchases and refunds, unique times per account
    counts = 2 + rng.poisson(3, n)
    acc_of_event = np.repeat(np.arange(n), counts)
    e = len(acc_of_event)
    span_ms = SPAN_DAYS * 86_400_000
    t = rng.integers(0, span_ms - 10_000, e)
    order = np.lexsort((t, acc_of_event))
    acc_of_event, t = acc_of_event[order], t[order]
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    t = t + (np.arange(e) - starts)  # strictly increasing within an account: unique event times
    is_refund = rng.random(e) < 0.15
    cents = np.where(is_refund, -rng.integers(500, 50_000, e), rng.integers(1_000, 200_000, e))
    ev = pl.DataFrame({
        "acc": acc_of_event,
        "t_ms": t + int(EPOCH.timestamp() * 1000),
        "cents": cents,
        "event_type": np.where(is_refund, "refund", "purchase"),
    })
    ev = ev.with_columns(pl.Series("account_id", np.asarray(acc_ids, dtype=object)[acc_of_event], dtype=pl.Utf8))
    ev = ev.with_columns(
        pl.from_epoch(pl.col("t_ms"), time_unit="ms").dt.replace_time_zone("UTC").alias("event_time"),
    ).with_columns(
        pl.col("event_time").dt.strftime("%Y-%m-%dT%H:%M:%S.%3fZ").alias("event_ts"),
    )
    # the partition is the producer's choice from the key (crc32 of "org:account"), recorded, not guessed
    keys = [f"{org_id}:{a}" for a in acc_ids]
    part_of_acc = np.fromiter((zlib.crc32(k.encode()) % spec.partitions for k in keys), dtype=np.int32, count=n)
    ev = ev.with_columns(pl.Series("partition", part_of_acc[ev["acc"].to_numpy()]))

    # maintenance window: an event-time interval that touches ~duplicate_fraction of accounts
    t0, t1 = _choose_window(ev, n, spec.duplicate_fraction + spec.n_special / n)
    in_window = (ev["t_ms"] >= t0) & (ev["t_ms"] <= t1)
    ev = ev.with_columns(pl.Series("in_window", in_window))
    win_accounts = np.unique(ev.filter(pl.col("in_window"))["acc"].to_numpy())
    outside = np.setdiff1d(np.arange(n), win_accounts)

    # missing_events: window accounts whose window events net positive are lost instead of duplicated
    win_sum = ev.filter(pl.col("in_window")).group_by("acc").agg(pl.col("cents").sum().alias("s"))
    lossy = np.sort(win_sum.filter(pl.col("s") > 0)["acc"].to_numpy())
    k = spec.n_special
    missing_events = rng.choice(lossy, size=min(k, len(lossy)), replace=False)
    dup_accounts = np.setdiff1d(win_accounts, missing_events)
    special = rng.choice(outside, size=3 * k, replace=False)
    stale, drift, missing_wh = special[:k], special[k : 2 * k], special[2 * k :]

    cls = np.full(n, "", dtype=object)
    cls[dup_accounts] = "duplicate_inflation"
    cls[missing_events] = "missing_events"
    cls[stale] = "stale_salesforce"
    cls[drift] = "warehouse_only_drift"
    cls[missing_wh] = "missing_in_warehouse"

    lost = in_window & pl.Series(np.isin(ev["acc"].to_numpy(), missing_events))
    ev = ev.with_columns(pl.Series("lost", lost), pl.Series("duplicated", in_window & ~lost))
    ev = ev.with_columns(pl.Series("event_id", event_ids(
        [org_id] * len(ev), ev["account_id"].to_list(), ev["event_type"].to_list(), ev["event_ts"].to_list())))

    messages = _plan_messages(ev, t1)

    # truth per account
    true_c = ev.group_by("acc").agg(pl.col("cents").sum().alias("true_cents"),
                                    pl.col("t_ms").max().alias("last_t"),
                                    pl.col("cents").last().alias("last_cents"))
    delivered = messages.group_by("acc").agg(pl.col("cents").sum().alias("raw_cents"),
                                             pl.len().alias("delivered"),
                                             pl.col("t_ms").max().alias("last_delivered_t"))
    dedup = messages.filter(~pl.col("is_copy")).group_by("acc").agg(pl.col("cents").sum().alias("dedup_cents"))
    copies = messages.filter(pl.col("is_copy")).group_by("acc").agg(pl.len().alias("copies"))
    acc = pl.DataFrame({"acc": np.arange(n), "Id": acc_ids, "class": cls.astype(str),
                        "OwnerId": np.asarray(owners, dtype=object)[owner_idx].astype(str),
                        "AnnualRevenue_cents": np.round(revenue * 100).astype(np.int64),
                        "Commission_Rate__c": rate})
    acc = acc.join(true_c, on="acc", how="left").join(delivered, on="acc", how="left") \
        .join(dedup, on="acc", how="left").join(copies, on="acc", how="left") \
        .with_columns(pl.col("copies").fill_null(0), pl.col("dedup_cents").fill_null(0),
                      pl.col("raw_cents").fill_null(0), pl.col("delivered").fill_null(0))
    stale_delta = pl.when(pl.col("class") == "stale_salesforce").then(pl.col("last_cents")).otherwise(0)
    drift_delta = pl.Series("drift_cents", rng.integers(1_000, 90_000, n) * np.where(rng.random(n) < 0.5, -1, 1))
    acc = acc.with_columns(drift_delta).with_columns(
        (pl.col("true_cents") - stale_delta).alias("sf_cents"),
        pl.when(pl.col("class") == "missing_in_warehouse").then(None)
        .when(pl.col("class") == "warehouse_only_drift").then(pl.col("raw_cents") + pl.col("drift_cents"))
        .otherwise(pl.col("raw_cents")).alias("wh_cents"),
    ).drop("drift_cents")
    acc = acc.with_columns(
        pl.when((pl.col("class") == "duplicate_inflation") & (pl.col("wh_cents") == pl.col("sf_cents")))
        .then(pl.lit("")).otherwise(pl.col("class")).alias("class"))
    return Scenario(spec=spec, org_id=org_id, users=users, accounts=acc, events=ev, messages=messages,
                    window=(t0, t1))


def _choose_window(ev: pl.DataFrame, n: int, target_fraction: float) -> tuple[int, int]:
    """Binary search on the width of an interval centred at 55% of the timeline."""
    t = ev["t_ms"].to_numpy()
    acc = ev["acc"].to_numpy()
    lo_t, hi_t = int(t.min()), int(t.max())
    centre = lo_t + int((hi_t - lo_t) * 0.55)
    lo, hi = 0, hi_t - lo_t
    target = target_fraction * n
    for _ in range(40):
        mid = (lo + hi) // 2
        sel = (t >= centre - mid // 2) & (t <= centre + mid // 2)
        if len(np.unique(acc[sel])) < target:
            lo = mid + 1
        else:
            hi = mid
    return centre - lo // 2, centre + lo // 2


def _plan_messages(ev: pl.DataFrame, t1: int) -> pl.DataFrame:
    """Per partition: originals in event-time order (lost ones skipped), then the replayed copies of
    the window block right after the window's last original, then the rest."""
    base = ev.filter(~pl.col("lost")).sort(["partition", "t_ms", "account_id"])
    base = base.with_columns(
        pl.int_range(pl.len()).over("partition").alias("sequence"),
        pl.lit(PRODUCER_ORIGINAL).alias("producer_id"),
        pl.lit(False).alias("is_copy"),
        pl.col("t_ms").alias("ts_ms"),
    )
    base = base.with_columns(
        pl.when(pl.col("t_ms") > t1).then(pl.lit(PRODUCER_REPLAY)).otherwise(pl.col("producer_id")).alias("producer_id"),
        # order key: originals before/in the window = 0, copies = 1, after = 2
        pl.when(pl.col("t_ms") > t1).then(2).otherwise(0).alias("phase"),
    )
    copies = base.filter(pl.col("duplicated")).with_columns(
        pl.lit(PRODUCER_REPLAY).alias("producer_id"),
        pl.lit(True).alias("is_copy"),
        pl.lit(1).alias("phase"),
    )
    # the replay happens right after the upgrade: producer timestamps just after the window
    copies = copies.with_columns((pl.lit(t1 + 1) + pl.int_range(pl.len()).over("partition")).alias("ts_ms"))
    msgs = pl.concat([base, copies]).sort(["partition", "phase", "sequence"])
    return msgs.with_columns(pl.int_range(pl.len()).over("partition").alias("position"))


# ----------------------------------------------------------------------------------------------
# writing the scenario into the three systems


def message_value(org: str, acc: str, typ: str, ts: str, cents: int) -> bytes:
    """The event as the producers write it (JSON, amount as a decimal string)."""
    sign = "-" if cents < 0 else ""
    return json.dumps({"org_id": org, "account_id": acc, "event_type": typ, "event_ts": ts,
                       "amount": f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"}, separators=(",", ":")).encode()


def produce(sc: Scenario, bootstrap: str, kafka_config: dict[str, str] | None = None) -> pl.DataFrame:
    """Produce every planned message and return the plan with the broker-assigned offsets.

    Two producer sessions, as in the story: the first sends everything up to the window's end and
    is flushed; the restarted one (a new producer id in the record batches) sends the replayed
    copies and the rest. Each partition's messages keep their planned order, so the offsets are
    those of a single producer."""
    from confluent_kafka import Producer

    m = sc.messages
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20, "log_level": 3,
            "compression.type": "lz4", "batch.num.messages": 10_000, "queue.buffering.max.messages": 1_000_000}
    conf.update(kafka_config or {})
    offsets = np.full(len(m), -1, dtype=np.int64)
    errors: list[str] = []

    def make_cb(i: int):  # noqa: ANN202 - callback factory
        def cb(err, msg) -> None:  # noqa: ANN001
            if err is not None:
                errors.append(str(err))
            else:
                offsets[i] = msg.offset()
        return cb

    cols = [m[c].to_list() for c in ("account_id", "event_type", "event_ts", "cents", "partition", "ts_ms",
                                     "producer_id", "sequence", "phase")]
    org = sc.org_id
    org_b = org.encode()
    remaining = 0
    for session in (0, 1):  # phase 0 by the first producer, phases 1 and 2 by the restarted one
        producer = Producer(conf)
        for i, (acc, typ, ts, cents, part, ts_ms, pid, seq, phase) in enumerate(zip(*cols, strict=True)):
            if (phase > 0) != bool(session):
                continue
            value = message_value(org, acc, typ, ts, cents)
            while True:
                try:
                    producer.produce(sc.spec.topic, value=value, key=f"{org}:{acc}".encode(), partition=part,
                                     timestamp=ts_ms, on_delivery=make_cb(i),
                                     headers=[("org-id", org_b), ("producer-id", pid.encode()),
                                              ("sequence", str(seq).encode())])
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 5000 == 0:
                producer.poll(0)
        remaining += producer.flush(120)
    if remaining or errors or (offsets < 0).any():
        raise RuntimeError(f"producing the scenario failed: {remaining} undelivered, errors: {errors[:3]}")
    return m.with_columns(pl.Series("offset", offsets))


def amount_str(cents: pl.Expr) -> pl.Expr:
    return (cents.cast(pl.Float64) / 100).round(2)


def write_warehouse(conn: psycopg.Connection, sc: Scenario, delivered: pl.DataFrame, reader_role: str | None) -> None:
    """`warehouse.clv_events` (one row per delivered message) and `warehouse.customer_clv` (the sums),
    in one transaction."""
    with conn.transaction():
        conn.execute("DROP SCHEMA IF EXISTS warehouse CASCADE")
        conn.execute("CREATE SCHEMA warehouse")
        conn.execute("""
            CREATE TABLE warehouse.clv_events (
                kafka_topic text NOT NULL, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL,
                org_id text NOT NULL, account_id text COLLATE "C" NOT NULL, event_type text NOT NULL,
                event_ts timestamptz NOT NULL, amount numeric(18,2) NOT NULL, producer_id text,
                loaded_at timestamptz NOT NULL DEFAULT now(),
                delivery int NOT NULL DEFAULT 1,  -- the times the consumer applied this offset (a rewind: 2)
                PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset, delivery))""")
        conn.execute("""
            CREATE TABLE warehouse.customer_clv (
                account_id text COLLATE "C" PRIMARY KEY, clv numeric(18,2) NOT NULL,
                event_count integer NOT NULL, updated_at timestamptz NOT NULL)""")
        ev = delivered.select(
            pl.lit(sc.spec.topic).alias("kafka_topic"), "partition", "offset", pl.lit(sc.org_id).alias("org_id"),
            "account_id", "event_type", "event_ts", amount_str(pl.col("cents")).alias("amount"), "producer_id",
            pl.col("delivery") if "delivery" in delivered.columns else pl.lit(1).alias("delivery"))
        with conn.cursor().copy("COPY warehouse.clv_events (kafka_topic, kafka_partition, kafka_offset, org_id, "
                                "account_id, event_type, event_ts, amount, producer_id, delivery) "
                                "FROM STDIN (FORMAT csv)") as cp:
            cp.write(ev.write_csv(include_header=False))
        a = sc.accounts.filter(pl.col("wh_cents").is_not_null())
        drift_time = datetime.fromtimestamp(sc.window[1] / 1000, UTC).isoformat()
        wh = a.select(
            pl.col("Id").alias("account_id"), amount_str(pl.col("wh_cents")).alias("clv"),
            pl.col("delivered").alias("event_count"),
            pl.when(pl.col("class") == "warehouse_only_drift").then(pl.lit(drift_time))
            .otherwise(pl.from_epoch(pl.col("last_delivered_t"), time_unit="ms").dt.strftime("%Y-%m-%dT%H:%M:%S.%3f+00:00"))
            .alias("updated_at"))
        with conn.cursor().copy("COPY warehouse.customer_clv (account_id, clv, event_count, updated_at) "
                                "FROM STDIN (FORMAT csv)") as cp:
            cp.write(wh.write_csv(include_header=False))
        conn.execute("ANALYZE warehouse.clv_events")
        conn.execute("ANALYZE warehouse.customer_clv")
        if reader_role:
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA warehouse TO {}").format(sql.Identifier(reader_role)))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA warehouse TO {}").format(sql.Identifier(reader_role)))


def salesforce_accounts(sc: Scenario) -> pl.DataFrame:
    """The Account rows as the Salesforce store holds them."""
    a = sc.accounts
    # Salesforce last touched the record when its value was last written: the last event it saw
    modstamp = pl.when(pl.col("class") == "stale_salesforce").then(pl.col("last_t") - 3_600_000).otherwise(pl.col("last_t"))
    return a.select(
        "Id",
        pl.format("Account {}", pl.col("acc")).alias("Name"),
        "OwnerId",
        amount_str(pl.col("AnnualRevenue_cents")).alias("AnnualRevenue"),
        amount_str(pl.col("sf_cents")).alias("Customer_Lifetime_Value__c"),
        amount_str(pl.col("sf_cents")).alias("Lifetime_Value__c"),  # the same values, for renamed mappings
        pl.col("Commission_Rate__c"),
        pl.from_epoch(modstamp, time_unit="ms").dt.replace_time_zone("UTC").alias("SystemModstamp"),
    )


def ground_truth(sc: Scenario, delivered: pl.DataFrame) -> dict[str, Any]:
    """What was injected, from the generator's own bookkeeping and the broker's delivery reports."""
    a = sc.accounts
    if "cause" not in delivered.columns:  # the replay: every copy is a message of the restarted producer
        delivered = delivered.with_columns(pl.lit(CAUSE_NAMES["replay"]).alias("cause"), pl.lit(1).alias("delivery"))
    copies = delivered.filter(pl.col("is_copy"))
    originals = delivered.filter(~pl.col("is_copy")).select("event_id", pl.col("offset").alias("original_offset"))
    copies = copies.join(originals, on="event_id", how="left").sort("partition", "offset", "delivery")
    windows = copies.group_by("partition").agg(
        pl.col("offset").min().alias("first_offset"), pl.col("offset").max().alias("last_offset"),
        pl.col("ts_ms").min().alias("first_ts_ms"), pl.col("ts_ms").max().alias("last_ts_ms"),
        pl.len().alias("events")).sort("partition")
    classes = {c: sorted(a.filter(pl.col("class") == c)["Id"].to_list()) for c in CLASSES}
    with_wh = a.filter(pl.col("wh_cents").is_not_null())
    over_total = under_total = Decimal(0)
    cent = Decimal("0.01")
    for wh, true, rate in zip(with_wh["wh_cents"].to_list(), with_wh["true_cents"].to_list(),
                              with_wh["Commission_Rate__c"].to_list(), strict=True):
        r = Decimal(str(rate))  # per account, in cents, rounded half-even: how a payroll would book it
        over_total += (Decimal(max(0, wh - true)) / 100 * r).quantize(cent, rounding=ROUND_HALF_EVEN)
        under_total += (Decimal(max(0, true - wh)) / 100 * r).quantize(cent, rounding=ROUND_HALF_EVEN)
    mismatched = a.filter(pl.col("wh_cents").is_not_null() & (pl.col("wh_cents") != pl.col("sf_cents")))["Id"].to_list()
    return {
        "seed": sc.spec.seed,
        "accounts": sc.spec.accounts,
        "org_id": sc.org_id,
        "topic": sc.spec.topic,
        "partitions": sc.spec.partitions,
        "events_generated": len(sc.events),
        "events_lost": int(sc.events["lost"].sum()),
        "messages_produced": delivered.filter(pl.col("delivery") == 1).height,
        "warehouse_deliveries": len(delivered),
        "cause": sc.spec.cause,
        "duplicate_copies": len(copies),
        # every extra delivery the warehouse applied: the offset it came from (a second delivery of
        # the same offset, the aborted copy, or the replayed message), the committed offset of the
        # same event, and why
        "copies": copies.select("partition", "offset", "delivery", "original_offset", "cause", "event_id",
                                "account_id").to_dicts(),
        "duplicate_records": copies["account_id"].n_unique(),
        "maintenance_window_event_time": [
            datetime.fromtimestamp(sc.window[0] / 1000, UTC).isoformat(),
            datetime.fromtimestamp(sc.window[1] / 1000, UTC).isoformat()],
        "windows": windows.to_dicts(),
        "classes": classes,
        "class_counts": {c: len(v) for c, v in classes.items()},
        "expected_diff": {
            "mismatched": sorted(mismatched),
            "missing_in_target": classes["missing_in_warehouse"],
            "missing_in_source": [],
        },
        "exposure": {
            "overpayment_total": str(over_total),
            "underpayment_total": str(under_total),
        },
    }


def check_cause(cause: str, backend: str | None) -> None:
    """Usage errors before anything is written: an unknown cause, or one that needs what only the
    Apache broker does (consumer groups whose offsets can be reset, transactions) on another."""
    if cause not in CAUSES:
        raise UsageError(f"--cause must be one of {', '.join(CAUSES)}")
    if cause != "replay" and backend != "apache":
        raise UsageError(f"--cause {cause} needs the Apache Kafka broker (consumer groups, offset resets and "
                         f"transactions), not {backend}: run `recon services down` then "
                         "`recon services up --kafka apache`")


@dataclass(frozen=True)
class LoadResult:
    truth_file: Path
    config_file: Path
    counts: dict[str, int]


def load(
    spec: ScenarioSpec,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    config_out: str | os.PathLike[str] = "recon.toml",
    progress: Any = None,
) -> LoadResult:
    """Generate the scenario and write it into the running embedded stack (see `recon services up`)."""
    from engine.local import stack
    from engine.local.kafka import create_topic, delete_topic
    from engine.local.salesforce import ORG_ID, load_records, reset_store
    from engine.local.state import StackPaths, load_credentials

    paths = StackPaths.at(state_dir)
    endpoints = stack.require_running(paths)
    check_cause(spec.cause, endpoints.get("kafka_backend"))
    if spec.cause == "mixed" and spec.partitions < len(MIXED):
        spec = replace(spec, partitions=len(MIXED))  # one partition per cause
    creds = load_credentials(paths)
    say = progress or (lambda _msg: None)

    say(f"generating {spec.accounts:,} accounts and their events (seed {spec.seed})")
    sc = generate(spec, ORG_ID)
    pg = stack.postgres_info(paths)

    say(f"producing {len(sc.messages):,} messages to {spec.topic} ({spec.partitions} partitions)")
    delete_topic(endpoints["kafka_bootstrap"], spec.topic)
    create_topic(endpoints["kafka_bootstrap"], spec.topic, partitions=spec.partitions)
    if spec.cause == "replay":
        delivered = produce(sc, endpoints["kafka_bootstrap"])
    else:
        from engine.local import causes

        causes.delete_group(endpoints["kafka_bootstrap"], group_name(spec.topic))
        delivered = causes.run(sc.messages, spec.topic, sc.org_id, endpoints["kafka_bootstrap"],
                               partition_causes(spec.cause, spec.partitions), say)

    say("loading the warehouse (warehouse.clv_events, warehouse.customer_clv)")
    with psycopg.connect(pg.socket_dsn) as conn:
        write_warehouse(conn, sc, delivered, creds["postgres_app_user"])

    say("initialising the recon_audit ledger (recon.toml records every run there)")
    from engine.store.ledger import Ledger

    # the administrator initialises; the application role appends (it can never become the owner)
    with Ledger(pg.socket_dsn) as ledger:
        ledger.init(writer=creds["postgres_app_user"])

    say("loading Salesforce (User, Account)")
    reset_store(pg)
    load_records(pg, "User", sc.users)
    load_records(pg, "Account", salesforce_accounts(sc))

    truth = ground_truth(sc, delivered)
    out = paths.root / "scenario"
    out.mkdir(parents=True, exist_ok=True)
    truth_file = out / "ground_truth.json"
    truth_file.write_text(json.dumps(truth, indent=2) + "\n")
    sc.accounts.drop("acc").write_parquet(out / "accounts.parquet")
    delivered.filter(pl.col("is_copy")).select("partition", "offset", "ts_ms", "account_id", "event_id") \
        .write_parquet(out / "copies.parquet")
    config_file = write_config(Path(config_out), endpoints, paths, spec, ledger_dsn=pg.app_dsn,
                               group=None if spec.cause == "replay" else group_name(spec.topic))
    counts = {
        "salesforce_accounts": len(sc.accounts),
        "salesforce_users": len(sc.users),
        "kafka_messages": truth["messages_produced"],
        "kafka_duplicate_copies": truth["duplicate_copies"],
        "warehouse_events": len(delivered),
        "warehouse_accounts": int(sc.accounts["wh_cents"].is_not_null().sum()),
        "mismatched_accounts": len(truth["expected_diff"]["mismatched"]),
        **{f"class_{k}": v for k, v in truth["class_counts"].items()},
    }
    return LoadResult(truth_file=truth_file, config_file=config_file, counts=counts)


def write_config(path: Path, endpoints: dict[str, Any], paths: Any, spec: ScenarioSpec, *,
                 ledger_dsn: str | None = None, group: str | None = None) -> Path:
    """The scenario's `recon.toml`: endpoints and file references only, never a secret. ``ledger_dsn``:
    the ledger's writer (the application role; its password is in the same pgpass file); ``group``:
    the warehouse's consumer group, when the cause made one (``kafka-audit --group`` reads it)."""
    group_line = f'group = "{group}"\n' if group else ""
    text = f"""# recon configuration for the local incident scenario (written by `recon scenario load`).
# Secrets are not in this file: they come from the files named below or from the environment.

[salesforce]
login_url = "{endpoints['salesforce_login_url']}"
instance_url = "{endpoints['salesforce_instance_url']}"
ca_bundle = "{endpoints['salesforce_ca_bundle']}"
credentials_file = "{paths.credentials_file}"

[postgres]
dsn = "{endpoints['postgres_dsn']}"
passfile = "{paths.pgpass_file}"

[kafka]
bootstrap = "{endpoints['kafka_bootstrap']}"
topic = "{spec.topic}"
{group_line}
[ledger]
dsn = "{ledger_dsn or endpoints['postgres_dsn']}"

[gate]
clv = {{ variance_ratio = 0.005, amount_variance_ratio = 0.005, column = "Customer_Lifetime_Value__c" }}

[commission]
default_rate = 0.05
sec_top_fraction = 0.05

[mapping.clv]
source = "salesforce:Account"
target = "{endpoints['postgres_dsn']}#warehouse.customer_clv"
key = ["Id=account_id"]
columns = ["Customer_Lifetime_Value__c=clv"]
target_updated_at = "updated_at"
tolerance = {{ Customer_Lifetime_Value__c = "0.00" }}
"""
    path.write_text(text)
    return path
