"""Attacks on the one definition of a valid event (issue 16.5): the audit and the consumer must read
every message the same way, and never through a float.

Each row produces its messages to a fresh topic of the scenario stack's Kafka, consumes it with
``recon consume`` into a fresh table (the command), then runs ``recon kafka-audit`` on the same topic
in ``after`` and checks that both agree: the same valid events with the same exact amounts, the same
messages invalid (dead-lettered) with the matching verdict.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import Stack

ORG = "00D5g0000000001EAA"
HEAD = ('{"org_id":"00D5g0000000001EAA","account_id":"%s","event_type":"purchase",'
        '"event_ts":"2026-08-01T10:00:00.123Z",')
ACC = ("0015g000000001xAAA", "0015g000000002hAAA", "0015g000000003bAAA")


def _produce(stack: Stack, values: list[bytes]) -> dict[str, Any]:
    """A fresh one-partition topic holding ``values`` (org-id header set), and names for a table and
    a group of their own."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = stack.endpoints["kafka_bootstrap"]
    topic = f"adv-16-5-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # held until the topic exists
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(30)
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for v in values:
        p.produce(topic, value=v, key=b"k", headers=[("org-id", ORG.encode())])
    assert p.flush(30) == 0
    return {"topic": topic, "table": f"adv165.ev_{uuid.uuid4().hex[:10]}", "group": f"adv-{uuid.uuid4().hex[:8]}"}


def _consume(stack: Stack, tmp: Path, ctx: dict[str, Any]) -> list[str]:
    dsn = stack.endpoints["postgres_dsn"]
    dsn += ("&" if "?" in dsn else "?") + "passfile=" + stack.endpoints["pgpass_file"]  # no password in the URI
    return ["consume", "--bootstrap", stack.endpoints["kafka_bootstrap"], "--topic", ctx["topic"], "--group",
            ctx["group"], "--dsn", dsn, "--table", ctx["table"], "--org-id", ORG, "--until-caught-up", "--json",
            "--metrics-interval", "0"]


def _query(stack: Stack, query: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(stack.endpoints["postgres_dsn"], passfile=stack.endpoints["pgpass_file"]) as conn:
        return conn.execute(query).fetchall()


def _audit(stack: Stack, ctx: dict[str, Any], code: int) -> dict[str, Any]:
    """kafka-audit's JSON of the attack's topic; ``code``: its exit (1 when a duplicate or conflict is found)."""
    run = stack.run("kafka-audit", "--bootstrap", stack.endpoints["kafka_bootstrap"], "--topic", ctx["topic"],
                    "--org-id", ORG, "--json")
    assert run.returncode == code, (run.returncode, run.stderr)
    return json.loads(run.stdout)


def _state(stack: Stack, ctx: dict[str, Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(record id, amount as stored, as text) of every applied event; (offset, reason, detail) of
    every dead letter."""
    from psycopg import sql

    schema, name = ctx["table"].split(".")
    rows = _query(stack, sql.SQL("SELECT record_id, amount::text FROM {} ORDER BY record_id").format(
        sql.Identifier(schema, name)))
    dead = _query(stack, sql.SQL("SELECT kafka_offset, reason, detail FROM {} ORDER BY kafka_offset").format(
        sql.Identifier(schema, name + "_dead_letters")))
    return rows, dead


# -- 1: unquoted numbers are read exactly by both (a float would round them) -----------------------
UNQUOTED = [
    (HEAD % ACC[0] + '"amount":123456789012.345678}').encode(),
    # the same event, quoted, with the float-rounded amount: the audit must call it a conflict
    # (different payload), not a duplicate, which it did while it read the first through a float
    (HEAD % ACC[0] + '"amount":"123456789012.34567"}').encode(),
    (HEAD % ACC[1] + '"amount":1234567890123456789.12}').encode(),
]


def _after_unquoted(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    out = json.loads(run.stdout)
    # the consumer agrees with the audit: the rounded copy is a conflict (16.3), never a duplicate
    assert (out["run"]["applied"], out["run"]["duplicates"], out["run"]["dead_letters"],
            out["run"]["conflicts"]) == (2, 0, 1, 1), out
    rows, dead = _state(stack, ctx)
    assert rows == [(ACC[0], "123456789012.345678"), (ACC[1], "1234567890123456789.12")]
    assert [(o, r) for o, r, _ in dead] == [(1, "conflict")], dead
    audit = _audit(stack, ctx, 1)  # a conflict is a finding
    assert (audit["events"], audit["invalid"], audit["unparsable"]) == (3, 0, 0), audit
    assert (audit["duplicates"], audit["conflicts"]) == (0, 1), audit  # exact: 123456789012.345678 ≠ …34567


# -- 2: an amount the audit's scale (Decimal(38, 6)) cannot hold is invalid for both ----------------
HUGE = [
    (HEAD % ACC[0] + '"amount":12345678901234567890123456789012345.5}').encode(),  # 35 digits before the point
    (HEAD % ACC[1] + '"amount":"1.1234567"}').encode(),  # 7 after
    (HEAD % ACC[2] + '"amount":1e3}').encode(),  # an exponent
]


def _after_huge(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    out = json.loads(run.stdout)
    assert (out["run"]["applied"], out["run"]["dead_letters"]) == (0, 3), out
    rows, dead = _state(stack, ctx)
    assert not rows and [(o, r) for o, r, _ in dead] == [(0, "invalid_amount"), (1, "invalid_amount"),
                                                          (2, "invalid_amount")], dead
    audit = _audit(stack, ctx, 0)
    assert (audit["events"], audit["invalid"], audit["unparsable"]) == (0, 3, 0), audit


# -- 3: a duplicated key makes the value unparsable for both (not "1" for one, "1000" for the other)
DUPLICATED = [
    (HEAD % ACC[0] + '"amount":"1","amount":"1000"}').encode(),
    (HEAD % ACC[1] + '"amount":"2.50"}').encode(),  # a good event next to it
]


def _after_duplicated(stack: Stack, tmp: Path, ctx: dict[str, Any], run: Run) -> None:
    out = json.loads(run.stdout)
    assert (out["run"]["applied"], out["run"]["dead_letters"]) == (1, 1), out
    rows, dead = _state(stack, ctx)
    assert rows == [(ACC[1], "2.50")], rows
    assert [(o, r) for o, r, _ in dead] == [(0, "unparsable")] and "duplicate key 'amount'" in dead[0][2], dead
    audit = _audit(stack, ctx, 0)
    assert (audit["events"], audit["invalid"], audit["unparsable"]) == (1, 0, 1), audit


ATTACKS = [
    Attack("16.5", "unquoted-amounts-exact", "amount 123456789012.345678 and 1234567890123456789.12 unquoted",
           _consume, 0, _after_unquoted, setup=lambda s, t: _produce(s, UNQUOTED)),
    Attack("16.5", "amount-beyond-scale", "amount 12345678901234567890123456789012345.5 unquoted, \"1.1234567\", 1e3",
           _consume, 0, _after_huge, setup=lambda s, t: _produce(s, HUGE)),
    Attack("16.5", "duplicated-key", '{"amount":"1","amount":"1000"}', _consume, 0, _after_duplicated,
           setup=lambda s, t: _produce(s, DUPLICATED)),
]
