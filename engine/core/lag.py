"""What is in flight between Kafka and the warehouse: the unapplied events' amount and age.

Pure: a scan frame (the events from the consumer's committed offset to the end of each partition)
and the offsets in, a summary out. Why these measures: the breaker's ``lag`` reason guards money,
so the amount is Σ|amount| (a refund in flight is as unapplied as a purchase, and they must not
cancel out), summed exactly as Decimals; lag seconds are measured from the oldest unapplied
message's Kafka timestamp (when the broker got it, not the event's business time, which a backfill
can set years back), because it is the consumer that is late, not the business.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import polars as pl

from engine.core.events import AMOUNT_DTYPE, iso_ms


def in_flight(frame: pl.DataFrame, committed: dict[int, int | None], now_ms: int) -> dict[str, Any]:
    """The summary a ``lag`` decision records: ``amount`` (Σ|amount| of valid unapplied events, a
    decimal string), ``events``, ``unparsable`` (messages no event can be read from: they still
    wait for the consumer, which will dead-letter them), ``oldest_ts``, ``lag_seconds`` (None when
    nothing is in flight) and, per partition, where the consumer stands and what waits after it."""
    ok = frame.filter(pl.col("status") == "ok")
    total = ok.select(pl.col("amount").cast(AMOUNT_DTYPE).abs().sum()).item() if ok.height else None
    amount = Decimal(total) if total is not None else Decimal(0)
    oldest = frame["ts_ms"].min() if frame.height else None
    per = frame.group_by("partition").agg(
        pl.len().alias("messages"), pl.col("offset").max().alias("last_offset"),
        (pl.col("status") == "ok").sum().alias("events"),
        pl.col("amount").filter(pl.col("status") == "ok").cast(AMOUNT_DTYPE).abs().sum().alias("amount"))
    by_part = {int(r["partition"]): r for r in per.iter_rows(named=True)}
    partitions = {}
    for p in sorted(set(committed) | set(by_part)):
        r = by_part.get(p) or {}
        partitions[str(p)] = {"committed": committed.get(p), "messages": int(r.get("messages") or 0),
                              "events": int(r.get("events") or 0), "last_offset": r.get("last_offset"),
                              "amount": str(_norm(Decimal(r["amount"]) if r.get("amount") is not None else Decimal(0)))}
    return {"amount": str(_norm(amount)), "events": ok.height, "unparsable": frame.height - ok.height,
            "oldest_ts": iso_ms(oldest), "lag_seconds": None if oldest is None else max(0, now_ms - int(oldest)) / 1000,
            "partitions": partitions}


def _norm(d: Decimal) -> Decimal:
    """One spelling per amount: no trailing zeros from the scale (``6.750000`` → ``6.75``), no exponent."""
    return d.quantize(Decimal(1)) if d == d.to_integral() else d.normalize()
