"""Kafka forensics and triangulation on the scenario, held against the generator's own record of
what it injected (not recomputed with recon's functions), plus robustness on hostile topics."""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any

import polars as pl
import pytest
from confluent_kafka import Producer

from engine.local.kafka import create_topic
from tests import prereqs


@pytest.fixture(scope="module")
def explained(scenario_stack, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("explain")
    diff = scenario_stack.run("diff", "-C", str(scenario_stack.config), "--mapping", "clv", "--out", str(d / "diff"))
    assert diff.returncode == 1, diff.stderr
    audit = scenario_stack.run("kafka-audit", "-C", str(scenario_stack.config), "--json")
    assert audit.returncode == 1, audit.stderr
    exp = scenario_stack.run("explain", "--diff", str(d / "diff"), "-C", str(scenario_stack.config), "--json",
                             "--out", str(d / "explain"))
    assert exp.returncode == 1, exp.stderr
    return {"dir": d, "audit": json.loads(audit.stdout), "explain": json.loads(exp.stdout),
            "findings": pl.read_parquet(d / "explain" / "findings.parquet"),
            "accounts": pl.read_parquet(scenario_stack.state / "scenario" / "accounts.parquet"),
            "copies": pl.read_parquet(scenario_stack.state / "scenario" / "copies.parquet")}


def test_every_redelivered_copy_found_and_no_other(scenario_stack, explained) -> None:
    truth, audit = scenario_stack.truth, explained["audit"]
    assert audit["duplicates"] == truth["duplicate_copies"]
    assert audit["duplicate_records"] == truth["duplicate_records"]
    assert audit["conflicts"] == 0 and audit["unparsable"] == 0
    found = set()
    for offs in explained["findings"]["copy_offsets"].to_list():
        found |= {tuple(map(int, x.split(":"))) for x in json.loads(offs)}
    injected = {(r["partition"], r["offset"]) for r in explained["copies"].iter_rows(named=True)}
    # copies of accounts whose inflation netted to zero are not mismatches, hence not in findings
    netted = set(explained["accounts"].filter((pl.col("copies") > 0) & (pl.col("class") == ""))["Id"].to_list())
    injected_mismatched = {(r["partition"], r["offset"]) for r in explained["copies"].iter_rows(named=True)
                           if r["account_id"] not in netted}
    assert found == injected_mismatched and found <= injected


def test_windows_equal_the_injected_blocks(scenario_stack, explained) -> None:
    got = [(w["partition"], w["first_offset"], w["last_offset"], w["events"]) for w in explained["audit"]["windows"]]
    want = [(w["partition"], w["first_offset"], w["last_offset"], w["events"]) for w in scenario_stack.truth["windows"]]
    assert got == want
    from datetime import UTC, datetime

    # the times of each window are those of its first and last produced copy (the generator's
    # timestamps, one millisecond apart), not recon's reading of them
    for g, w in zip(explained["audit"]["windows"], scenario_stack.truth["windows"], strict=True):
        assert w["last_ts_ms"] > w["first_ts_ms"]  # so a swapped or collapsed pair is seen
        assert datetime.fromisoformat(g["first_ts"]) == datetime.fromtimestamp(w["first_ts_ms"] / 1000, UTC)
        assert datetime.fromisoformat(g["last_ts"]) == datetime.fromtimestamp(w["last_ts_ms"] / 1000, UTC)
        assert (g["first_ts"], g["last_ts"]) == (_iso_ms(w["first_ts_ms"]), _iso_ms(w["last_ts_ms"]))
    assert explained["audit"]["sequence"]["regressions"] == scenario_stack.truth["partitions"]  # one replay each


def test_every_mismatched_account_in_its_injected_class(scenario_stack, explained) -> None:
    f = explained["findings"]
    got = dict(zip(f["Id"].to_list(), f["class"].to_list(), strict=True))
    want = {acc: cls for cls, accs in scenario_stack.truth["classes"].items() for acc in accs}
    assert got == want
    assert explained["explain"]["classes"]["unexplained"] == 0


def test_every_duplicate_window_is_a_producer_replay_named_by_the_scenarios_producer_ids(scenario_stack,
                                                                                      explained) -> None:
    """The scenario's replay (a restarted producer re-sending a window's block) is explain's
    ``producer_replay`` for every copy of every window, with the producer ids and the originals'
    offsets the generator recorded in the warehouse's event table (one row per delivered message),
    not recon's reading of them. Until the record batches' ids are read, they are the headers'."""
    import psycopg

    from engine.local.scenario import PRODUCER_ORIGINAL, PRODUCER_REPLAY

    copies = {(r["partition"], r["offset"]) for r in explained["copies"].iter_rows(named=True)}
    with psycopg.connect(scenario_stack.endpoints["postgres_socket_dsn"]) as c:
        pairs = c.execute("""
            SELECT c.kafka_partition, c.kafka_offset, c.producer_id, o.kafka_partition, o.kafka_offset, o.producer_id
            FROM warehouse.clv_events c JOIN warehouse.clv_events o
              ON (o.account_id, o.event_type, o.event_ts) = (c.account_id, c.event_type, c.event_ts)
             AND (o.kafka_partition, o.kafka_offset) <> (c.kafka_partition, c.kafka_offset)""").fetchall()
    original = {(p, o): (pid, op, oo, opid) for p, o, pid, op, oo, opid in pairs if (p, o) in copies}
    assert set(original) == copies
    assert {(v[0], v[3]) for v in original.values()} == {(PRODUCER_REPLAY, PRODUCER_ORIGINAL)}
    kafka = explained["explain"]["kafka"]
    windows = kafka["windows"]
    assert [(w["partition"], w["first_offset"], w["last_offset"]) for w in windows] == \
        [(w["partition"], w["first_offset"], w["last_offset"]) for w in scenario_stack.truth["windows"]]
    for w in windows:
        assert [(c["cause"], c["events"], c["share"]) for c in w["causes"]] == [("producer_replay", w["events"], 1.0)]
        (e,) = w["causes"][0]["evidence"]
        orig = [original[(w["partition"], o)] for o in range(w["first_offset"], w["last_offset"] + 1)
                if (w["partition"], o) in copies]
        assert len(orig) == w["events"]
        assert (e["kind"], e["topic"], e["partition"], e["from_offset"], e["to_offset"], e["producer_id"],
                e["source"], e["as_far_as_can_be_read"]) == (
            "producer_ids", explained["audit"]["topic"], w["partition"], w["first_offset"], w["last_offset"], int(PRODUCER_REPLAY),
            "header", False)
        assert e["original"] == {"partition": w["partition"], "from_offset": min(v[2] for v in orig),
                                 "to_offset": max(v[2] for v in orig), "producer_id": int(PRODUCER_ORIGINAL),
                                 "producer_epoch": None}
    assert kafka["causes"] == {"producer_replay": scenario_stack.truth["duplicate_copies"]}
    assert (kafka["redeliveries"], kafka["redelivery_windows"], kafka["history_coverage"]) == (0, [], None)


def test_exposure_equals_the_injected_truth(scenario_stack, explained) -> None:
    e = explained["explain"]["exposure"]
    assert e["total"] == scenario_stack.truth["exposure"]["overpayment_total"]
    assert e["underpayment_total"] == scenario_stack.truth["exposure"]["underpayment_total"]
    acc = explained["accounts"]
    by_owner: dict[str, int] = {}
    from decimal import ROUND_HALF_EVEN, Decimal

    for r in acc.filter(pl.col("wh_cents").is_not_null()).iter_rows(named=True):
        over = (Decimal(max(0, r["wh_cents"] - r["true_cents"])) / 100 * Decimal(str(r["Commission_Rate__c"]))
                ).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
        if over:
            by_owner[r["OwnerId"]] = by_owner.get(r["OwnerId"], Decimal(0)) + over
    assert {k: Decimal(v) for k, v in e["by_owner"].items()} == by_owner


def test_sec_critical_subset_is_the_top_revenue_five_percent_listed_first(explained) -> None:
    acc = explained["accounts"].sort("AnnualRevenue_cents", descending=True)
    top = set(acc.head(math.ceil(len(acc) * 0.05))["Id"].to_list())
    f = explained["findings"]
    flagged = set(f.filter(pl.col("sec_critical"))["Id"].to_list())
    assert flagged == top & set(f["Id"].to_list())
    flags = f["sec_critical"].to_list()
    assert flags == sorted(flags, reverse=True)  # SEC-critical first


def test_explain_records_its_run_in_the_ledger_and_a_manifest_that_verifies(scenario_stack, explained,
                                                                             tmp_path) -> None:
    """--ledger, --manifest and --signing-key as for diff, gate and repair: the run, its inputs and
    its lineage in the ledger, the outputs written next to the manifest (no --out) and signed."""
    import psycopg

    keys = scenario_stack.run("keygen", "--out", str(tmp_path / "keys"))
    assert keys.returncode == 0, keys.stderr
    dsn = tomllib.loads(scenario_stack.config.read_text())["ledger"]["dsn"]  # the writer, not the admin
    manifest = tmp_path / "m" / "explain.manifest.json"
    res = scenario_stack.run("explain", "--diff", str(explained["dir"] / "diff"), "-C", str(scenario_stack.config),
                             "--ledger", dsn, "--manifest", str(manifest), "--signing-key",
                             str(tmp_path / "keys" / "recon.key"), "--json")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["classes"] == explained["explain"]["classes"]
    ev = doc["evidence"]
    assert ev["manifest"]["path"] == str(manifest) and ev["ledger"]["manifest_seq"] > ev["ledger"]["run_seq"]
    assert (tmp_path / "m" / "explain.json").is_file() and (tmp_path / "m" / "findings.parquet").is_file()
    with psycopg.connect(scenario_stack.endpoints["postgres_socket_dsn"]) as c:
        run = json.loads(c.execute("SELECT canonical FROM recon_audit.runs WHERE seq = %s",
                                   (ev["ledger"]["run_seq"],)).fetchone()[0])
        inputs = [json.loads(r[0]) for r in c.execute(
            "SELECT canonical FROM recon_audit.inputs WHERE canonical::jsonb ->> 'run_id' = %s ORDER BY seq",
            (ev["run_id"],)).fetchall()]
    assert (run["command"], run["status"], run["run_id"]) == ("explain", "COMPLETE", ev["run_id"])
    assert run["summary"]["records"] == doc["records"]
    assert {o["name"] for o in run["outputs"]} == {"explain.json", "findings.parquet"}
    assert [(i["side"], i["system"]) for i in inputs] == [("diff", "parquet"), ("stream", "kafka"),
                                                          ("source", "salesforce")]
    # where the root-cause evidence lies, in the ledger and in the signed manifest: each window's
    # copies and their originals (topic, partition, offsets), nothing of the events themselves
    places = sorted((e["kind"], e["topic"], e["partition"], a, b)
                    for w in doc["kafka"]["windows"] for c in w["causes"] for e in c["evidence"]
                    for a, b in ((e["from_offset"], e["to_offset"]),
                                 (e["original"]["from_offset"], e["original"]["to_offset"])))
    assert len(places) == 2 * len(scenario_stack.truth["windows"])
    fields = ("kind", "topic", "partition", "from_offset", "to_offset")
    assert sorted(tuple(r[k] for k in fields) for r in inputs[1]["root_cause"]) == places
    assert all(set(r) == set(fields) for r in inputs[1]["root_cause"])
    import base64

    statement = json.loads(base64.b64decode(json.loads(manifest.read_text())["payload"]))
    (stream,) = [i for i in statement["predicate"]["inputs"] if i["side"] == "stream"]
    assert sorted(tuple(r[k] for k in fields) for r in stream["root_cause"]) == places
    pub = str(tmp_path / "keys" / "recon.pub")
    v = scenario_stack.run("manifest", "verify", str(manifest), "--key", pub)
    assert v.returncode == 0, v.stderr + v.stdout
    lv = scenario_stack.run("ledger", "verify", "-C", str(scenario_stack.config), "--checkpoint", str(manifest),
                            "--key", pub)
    assert lv.returncode == 0, lv.stderr + lv.stdout
    # a manifest without a key is a usage error before anything is read
    bad = scenario_stack.run("explain", "--diff", str(tmp_path / "nowhere"), "--manifest", str(manifest))
    assert bad.returncode == 2 and "--signing-key" in bad.stderr, bad.stderr


def _produce(bootstrap: str, topic: str, msgs: list[tuple[bytes | None, bytes | None, int]],
             ts_ms: int | None = None) -> dict[tuple[int, int], int]:
    """Produce ``msgs`` (with ``ts_ms``: message i gets the timestamp ``ts_ms + 1001·i``, so each has
    its own millisecond part) and return the broker's delivery reports: (partition, offset) →
    timestamp in ms, what a test expects recon to report, independent of recon's reading of it."""
    p = Producer({"bootstrap.servers": bootstrap})
    delivered: dict[tuple[int, int], int] = {}

    def on_delivery(err: Any, m: Any) -> None:
        if err is None:
            delivered[(m.partition(), m.offset())] = m.timestamp()[1]

    for i, (key, value, part) in enumerate(msgs):
        stamp = {} if ts_ms is None else {"timestamp": ts_ms + 1001 * i}
        p.produce(topic, key=key, value=value, partition=part, on_delivery=on_delivery, **stamp)
    assert p.flush(30) == 0
    assert len(delivered) == len(msgs)
    return delivered


def _iso_ms(ts_ms: int) -> str:
    """A Kafka timestamp as the README's windows write it (UTC, milliseconds, ``Z``)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ts_ms % 1000:03d}Z"


def test_hostile_topic_is_counted_not_fatal(scenario_stack) -> None:
    bs = scenario_stack.endpoints["kafka_bootstrap"]
    org = scenario_stack.truth["org_id"]
    create_topic(bs, "hostile", partitions=3)
    good = {"org_id": org, "account_id": "0015g0000000001AAA", "event_type": "purchase",
            "event_ts": "2026-08-01T10:00:00.000Z", "amount": "10.00"}
    msgs = [
        (b"k", json.dumps(good).encode(), 0),
        (b"k", json.dumps(good).encode(), 0),  # a duplicate
        (b"k", json.dumps({**good, "amount": "11.00"}).encode(), 0),  # same id, other payload: conflict
        (b"k", b"{not json", 0),
        (b"k", json.dumps({k: v for k, v in good.items() if k != "amount"}).encode(), 0),  # missing field
        (b"k", json.dumps({**good, "org_id": "00D000000000001EAA"}).encode(), 0),  # foreign org (a valid id: a bad one is invalid)
        (b"k", None, 0),  # tombstone
        (b"k", json.dumps({**good, "event_ts": "2026-08-01T10:00:01.000Z"}).encode(), 1),
    ]  # partition 2 stays empty
    # explicit timestamps (a minute ago, whole seconds + 123 ms): recent enough for any retention,
    # with a millisecond part that a truncation would lose
    from datetime import UTC, datetime

    delivered = _produce(bs, "hostile", msgs, ts_ms=(int(datetime.now(UTC).timestamp()) - 60) * 1000 + 123)
    res = scenario_stack.run("kafka-audit", "--bootstrap", bs, "--topic", "hostile", "--org-id", org, "--json")
    assert res.returncode == 1, res.stderr
    s = json.loads(res.stdout)
    assert (s["events"], s["duplicates"], s["conflicts"], s["unparsable"], s["invalid"], s["foreign_org"],
            s["tombstones"]) == (4, 1, 1, 1, 1, 1, 1)
    assert s["unparsable_samples"][0]["offset"] == 3
    # the one copy (offset 1) is the window; its times are the produced message's timestamp
    copy_ts = _iso_ms(delivered[(0, 1)])
    assert s["windows"] == [{"partition": 0, "first_offset": 1, "last_offset": 1, "first_ts": copy_ts,
                             "last_ts": copy_ts, "events": 1}]
    # an explicit offset window that excludes the copies, and an empty time window
    res = scenario_stack.run("kafka-audit", "--bootstrap", bs, "--topic", "hostile", "--offsets", "0:0-0,1:0-0", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["events"] == 2
    res = scenario_stack.run("kafka-audit", "--bootstrap", bs, "--topic", "hostile", "--from", "2001-01-01T00:00:00Z",
                             "--to", "2001-01-02T00:00:00Z", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["events"] == 0


def test_empty_topic_is_zero_events(scenario_stack) -> None:
    bs = scenario_stack.endpoints["kafka_bootstrap"]
    create_topic(bs, "empty-topic", partitions=2)
    res = scenario_stack.run("kafka-audit", "--bootstrap", bs, "--topic", "empty-topic", "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert (s["events"], s["duplicates"], s["windows"]) == (0, 0, [])


def test_topic_that_does_not_exist_is_exit_2(scenario_stack) -> None:
    bs = scenario_stack.endpoints["kafka_bootstrap"]
    res = scenario_stack.run("kafka-audit", "--bootstrap", bs, "--topic", "no-such-topic", "--json")
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in res.stderr


@pytest.mark.slow  # waits out the 15 s metadata deadline; test_consumer checks a broker past its deadline by default
def test_unreachable_broker_is_one_line_exit_5(scenario_stack) -> None:
    """librdkafka logs a refused connection every 50 ms; none of that reaches the user's terminal."""
    res = scenario_stack.run("kafka-audit", "--bootstrap", "127.0.0.1:9", "--topic", "clv-events", "--json", timeout=60)
    assert res.returncode == 5
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    waits, lines = lines[:-1], lines[-1:]  # one progress line per retry, then the error
    assert waits and all(w.startswith("recon: waiting: Kafka at 127.0.0.1:9 unreachable, retrying in ") for w in waits), res.stderr
    assert len(lines) == 1 and "did not answer" in lines[0] and "127.0.0.1:9" in lines[0], res.stderr


def test_kafka_config_consumer_properties_are_quiet_and_bad_ones_named(scenario_stack, tmp_path) -> None:
    good = tmp_path / "good.properties"
    good.write_text("# consumer tuning\nfetch.wait.max.ms=50\nqueued.max.messages.kbytes=65536\n")
    res = scenario_stack.run("kafka-audit", "-C", str(scenario_stack.config), "--kafka-config", str(good), "--json")
    assert res.returncode == 1 and res.stderr.strip() == "", res.stderr  # no librdkafka warning lines
    assert json.loads(res.stdout)["duplicates"] > 0
    bad = tmp_path / "bad.properties"
    bad.write_text("sasl.password=hunter2\nno.such.property=hunter3\n")
    res = scenario_stack.run("kafka-audit", "-C", str(scenario_stack.config), "--kafka-config", str(bad), "--json")
    assert res.returncode == 2
    assert res.stderr.strip() == ("recon: error: invalid Kafka configuration: unknown property 'no.such.property': "
                                  "check --kafka-config")
    assert "hunter" not in res.stderr + res.stdout


def test_sasl_login_reads_and_wrong_credentials_are_one_line_exit_2(scenario_stack, apache_kafka, kafka_topic,
                                                                    tmp_path) -> None:
    """Against the local broker's SASL_PLAINTEXT listener: the right login reads the topic with
    either scan loop; a wrong password is told apart from a silent broker at once, and never shown."""

    from engine.local.kafka import LOCAL_SASL_PASSWORD, LOCAL_SASL_USER

    org = scenario_stack.truth["org_id"]
    topic = kafka_topic(apache_kafka, partitions=2)
    ev = {"org_id": org, "account_id": "0015g0000000001AAA", "event_type": "purchase",
          "event_ts": "2026-08-01T10:00:00.000Z", "amount": "10.00"}
    _produce(apache_kafka.bootstrap, topic, [(b"k", json.dumps({**ev, "event_ts": f"2026-08-01T10:00:0{i}.000Z"}).encode(),
                                              i % 2) for i in range(6)] + [(b"k", json.dumps(ev).encode(), 1)])
    sasl = apache_kafka.broker.sasl_bootstrap
    base = f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username={LOCAL_SASL_USER}\n"
    good, bad = tmp_path / "good.properties", tmp_path / "bad.properties"
    good.write_text(base + f"sasl.password={LOCAL_SASL_PASSWORD}\n")
    bad.write_text(base + "sasl.password=not-the-password-42\n")
    outs = []
    for native in ("1", "0"):
        res = scenario_stack.run("kafka-audit", "--bootstrap", sasl, "--topic", topic, "--kafka-config", str(good),
                                 "--json", env={"RECON_KAFKA_NATIVE": native})
        assert res.returncode == 1, res.stderr
        out = json.loads(res.stdout)
        out.pop("elapsed_s", None)
        outs.append(out)
    assert outs[0] == outs[1] and (outs[0]["events"], outs[0]["duplicates"]) == (7, 1)
    res = scenario_stack.run("kafka-audit", "--bootstrap", sasl, "--topic", topic, "--kafka-config", str(bad), "--json")
    assert res.returncode == 2  # a refused login, not the outage "did not answer" (exit 5)
    assert res.stderr.strip() == (f"recon: error: Kafka at {sasl} refused the credentials (SASL authentication "
                                  "failed): check sasl.username, sasl.password and sasl.mechanism in --kafka-config")
    assert "not-the-password-42" not in res.stdout + res.stderr


def test_malformed_offsets_is_exit_2(scenario_stack) -> None:
    res = scenario_stack.run("kafka-audit", "-C", str(scenario_stack.config), "--offsets", "0:9-1")
    assert res.returncode == 2 and "malformed --offsets" in res.stderr


@pytest.mark.parametrize("loop", ["python", "native"])
def test_worker_scan_equals_single_process_scan_with_mixed_headers(scenario_stack, loop: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel scan (worker processes, Arrow IPC files, concatenation without a sort) and the
    single-process scan give the same frame and audit, with either scan loop; header values are
    picked alike whether a message has all, some, repeated or no headers, and sequence gaps and
    regressions are found."""
    from engine.connectors.kafka import native as kafka_native
    from engine.connectors.kafka import scan as ks
    from engine.core import forensics

    if loop == "native":
        prereqs.require_native_scan()
    monkeypatch.setenv(kafka_native.ENV, "1" if loop == "native" else "0")  # the workers inherit it
    bs = scenario_stack.endpoints["kafka_bootstrap"]
    org = scenario_stack.truth["org_id"]
    topic = f"mixed-headers-{loop}"
    create_topic(bs, topic, partitions=3)
    p = Producer({"bootstrap.servers": bs})
    base = {"org_id": org, "event_type": "purchase", "amount": "1.00"}
    seqs = {0: [0, 1, 2, 5, 6, 3, 4], 1: [0, 1, 2, 3, 4, 5, 6], 2: [10, 11, 12, 13, 14, 15, 16]}
    for part, ss in seqs.items():
        for i, sq in enumerate(ss):
            ev = {**base, "account_id": f"0015g00000000{part}{i}AAA", "event_ts": f"2026-08-01T10:00:0{i}.000Z"}
            hs: list[tuple[str, bytes]] | None = [("org-id", org.encode()), ("producer-id", b"7"), ("sequence", str(sq).encode())]
            if part == 2 and i == 1:
                hs = None  # no headers at all: not in the sequence check
            elif part == 2 and i == 2:
                hs = [("sequence", b"99"), ("producer-id", b"8"), ("sequence", str(sq).encode())]  # repeated: last wins
            p.produce(topic, value=json.dumps(ev).encode(), partition=part, headers=hs)
        p.produce(topic, value=json.dumps(ev).encode(), partition=part)  # a copy, without headers
    assert p.flush(30) == 0
    one = ks.scan(bs, topic, workers=1)
    many = ks.scan(bs, topic, workers=3)
    cols = sorted(one.frame.columns)
    assert many.frame.select(cols).equals(one.frame.select(cols).sort(["partition", "offset"]))
    assert one.frame.filter((pl.col("partition") == 2) & (pl.col("offset") == 2))["producer_id"].to_list() == ["8"]
    assert one.frame.filter((pl.col("partition") == 2) & (pl.col("offset") == 1))["org_header"].to_list() == [None]
    a1, a3 = forensics.audit(one, org_id=org).summary(), forensics.audit(many, org_id=org).summary()
    a1.pop("elapsed_s"), a3.pop("elapsed_s")
    assert a1 == a3
    # partition 2: the message without headers is skipped, so 10 -> 12 is a gap
    assert (a1["duplicates"], a1["sequence"]["gaps"], a1["sequence"]["regressions"]) == (3, 2, 1)
    assert [(r["partition"], r["offset"], r["previous_sequence"], r["sequence"])
            for r in a1["sequence"]["gap_samples"] + a1["sequence"]["regression_samples"]] == [
        (0, 3, 2, 5), (2, 2, 10, 12), (0, 5, 6, 3)]


def test_explain_names_every_owner_from_salesforce_user(explained) -> None:
    """Issue 21: explain fetches the owners' names once, from Salesforce User, into explain.json (signed
    with the findings), so that the report can name them offline. Held against the scenario's own
    list of owners (the generator names owner i "Account Executive i")."""
    from engine.core.sfid import make_ids
    from engine.local import scenario

    want = {oid: f"Account Executive {i:03d}" for i, oid in enumerate(make_ids("005", 1000, scenario.N_OWNERS))}
    owners = set(explained["findings"]["owner_id"].drop_nulls().to_list())
    assert owners, "the scenario's findings have owners"
    assert explained["explain"]["owners"] == {o: want[o] for o in owners}
