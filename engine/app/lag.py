"""`recon gate --lag`: the ``lag`` reason of a mapping's breaker, from the money the warehouse's
consumer has not applied yet.

The diff gate sees what the warehouse *got wrong*; this sees what it has *not got yet*. An hourly
aggregation that runs while the consumer is paused (a deploy, a rebalance storm, a poison message)
publishes totals that are short by whatever sits in Kafka after the consumer's offset, and a diff
cannot tell that from a loss. So before the aggregation runs, the gate reads, per partition, the
events from the consumer's committed offset to the end (see :mod:`engine.connectors.kafka.lag`
for whose offsets count), sums Σ|amount| exactly and measures the oldest one's age
(:mod:`engine.core.lag`), and opens ``lag`` above ``[gate] NAME.lag_amount`` or ``lag_seconds``.
Catching up closes ``lag`` only: a ``variance`` a diff opened stays open until a diff closes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from engine.config import Config
from engine.core.errors import UsageError
from engine.core.gate import Decision, LagThresholds, evaluate_lag

#: [kafka] keys that are recon's, not librdkafka properties
RECON_KAFKA_KEYS = ("bootstrap", "topic", "group")


def kafka_properties(section: dict[str, Any]) -> dict[str, str]:
    """The librdkafka properties of ``[kafka]``: every key but recon's own."""
    return {k: str(v) for k, v in section.items() if k not in RECON_KAFKA_KEYS}


def decide_lag(config: Config, mapping: str, *, run_id: str, clock: Callable[[], float] = time.time) -> Decision:
    """The ``lag`` decision for ``mapping`` (pure of the ledger: writes nothing)."""
    from engine.connectors.kafka import lag as kafka_lag
    from engine.connectors.postgres.connection import statement_timeout_ms
    from engine.core.lag import in_flight

    config.mapping(mapping)  # a breaker is kept for a configured mapping only
    limits = config.lag(mapping)
    if limits.amount is None and limits.seconds is None:
        raise UsageError(f"{config.where}: [gate] {mapping} sets neither lag_amount nor lag_seconds: add e.g. "
                         f"{mapping} = {{ lag_amount = \"10000.00\", lag_seconds = 900 }}")
    k = config.section("kafka")
    bootstrap, topic = k.get("bootstrap"), k.get("topic")
    if not bootstrap or not topic:
        raise UsageError(f"{config.where}: --lag reads the topic of [kafka] bootstrap and topic: set both")
    extra = kafka_properties(k)
    source: dict[str, Any] = {"offsets": limits.offsets}
    if limits.offsets == "kafka":
        group = k.get("group")
        if not isinstance(group, str) or not group:
            raise UsageError(f"{config.where}: [gate] {mapping}.lag_offsets = \"kafka\" reads the committed offsets of "
                             "the warehouse's consumer group: set [kafka] group")
        parts = kafka_lag.topic_partitions(bootstrap, topic, extra)
        committed = kafka_lag.kafka_committed(bootstrap, topic, group, parts, extra)
        source["group"] = group
    else:
        dsn = config.section("postgres").get("dsn")
        if not isinstance(dsn, str) or not dsn:
            raise UsageError(f"{config.where}: [gate] {mapping}.lag_offsets = \"postgres\" reads the offsets table "
                             "in the database of [postgres] dsn: set it")
        assert limits.table is not None  # Config.lag requires it for "postgres"
        committed = kafka_lag.postgres_stored(dsn, limits.table, topic, passfile=config.pg_passfile(),
                                              statement_timeout_ms=statement_timeout_ms(config))
        source["table"] = limits.table
    now_ms = int(clock() * 1000)  # the offsets' time: events behind them are measured from here
    scanned = kafka_lag.unapplied(bootstrap, topic, committed, extra=extra)
    summary = in_flight(scanned.frame, committed, now_ms)
    state, tripped = evaluate_lag(Decimal(summary["amount"]), summary["lag_seconds"], limits)
    return Decision(mapping=mapping, state=state, kind="lag", reason=_reason(state, tripped, summary, limits),
                    run_id=run_id, thresholds=_limits(limits), tripped=tripped, reasons={"lag": state},
                    lag={"bootstrap": bootstrap, "topic": topic, **source, **summary})


def _limits(limits: LagThresholds) -> dict[str, Any]:
    return {"lag_amount": None if limits.amount is None else str(limits.amount), "lag_seconds": limits.seconds}


def _reason(state: str, tripped: list[str], summary: dict[str, Any], limits: LagThresholds) -> str:
    age = summary["lag_seconds"]
    facts = {"lag_amount": f"amount in flight {summary['amount']} ({summary['events']} event(s))",
             "lag_seconds": f"oldest unapplied event {'none' if age is None else f'{age:.3f} s'} old"}
    limit = {"lag_amount": limits.amount, "lag_seconds": limits.seconds}
    if state == "open":
        return "consumer lag above threshold: " + "; ".join(f"{facts[n]} > {limit[n]}" for n in tripped)
    return "consumer lag within thresholds: " + "; ".join(
        f"{facts[n]} <= {limit[n]}" for n in ("lag_amount", "lag_seconds") if limit[n] is not None)
