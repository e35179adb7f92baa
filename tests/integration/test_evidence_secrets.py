# ruff: noqa: S608 - test fixtures built from constant table names
"""Evidence end to end on the embedded PostgreSQL: a real diff recorded in the ledger, as OpenLineage
events (files and HTTP) and as a signed manifest — and no configured secret anywhere in them.

The secrets are the stack's real passwords (one of them even typed into the source DSN and the
ledger DSN) and fake Salesforce credentials in the environment. Every artefact is scanned: files
written (recursively, as bytes), the manifest's decoded payload, every ledger row, the JSON the
commands print, captured stdout/stderr and log records.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import psycopg
import pytest

from engine.app.evidence import SecretInEvidence, check_no_secret, known_secrets, record_diff_evidence, scrub
from engine.app.reconcile import DiffRequest, run_diff, write_outputs
from engine.config import load
from engine.evidence import lineage as ol
from engine.evidence import manifest as mf
from engine.store import ledger as lg

FAKE_SF = {
    "SF_PASSWORD": "fake-sf-password-Zq81!x",
    "SF_SECURITY_TOKEN": "FAKEtoken0123456789abcd",
    "SF_CONSUMER_SECRET": "fake-consumer-secret-77AA",
    "SF_SESSION_ID": "00Dfake!AQ0AQsessionvalue",
    "OPENLINEAGE_API_KEY": "fake-openlineage-api-key-123",
}


class _Sink(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Sink.received.append((self.path, dict(self.headers), body))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture()
def lineage_backend():  # noqa: ANN201
    _Sink.received = []
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def evidence_db(embedded_pg) -> dict:  # noqa: ANN001
    name = f"evsec_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(embedded_pg.info.superuser_socket_dsn("postgres"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name} OWNER recon")
    sock = f"postgresql://recon@/{name}?host={embedded_pg.info.socket_dir}&port={embedded_pg.info.port}"
    with psycopg.connect(sock, autocommit=True) as c:
        c.execute("CREATE SCHEMA s")
        for t in ("a", "b"):
            c.execute(f'CREATE TABLE s.{t} (id text COLLATE "C" PRIMARY KEY, amount numeric(12,2), name text)')
            c.execute(f"INSERT INTO s.{t} SELECT 'acct' || lpad(g::text, 4, '0'), g * 1.5, 'n' || g "
                      "FROM generate_series(1, 200) g")
        c.execute("UPDATE s.b SET amount = amount + 10 WHERE id IN ('acct0007', 'acct0100')")
        c.execute("DELETE FROM s.b WHERE id = 'acct0050'")
        c.execute("GRANT USAGE ON SCHEMA s TO recon_app")
        c.execute("GRANT SELECT ON ALL TABLES IN SCHEMA s TO recon_app")
    with lg.Ledger(sock) as admin:
        admin.init(writer="recon_app")
    yield {"name": name}
    with psycopg.connect(embedded_pg.info.superuser_socket_dsn("postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _secrets(embedded_pg) -> dict[str, str]:  # noqa: ANN001
    creds = embedded_pg.creds
    out = {k: v for k, v in creds.items() if any(w in k for w in ("password", "token", "secret"))}
    out.update(FAKE_SF)
    return out


def _scan(label: str, text: str, secrets: dict[str, str]) -> None:
    for name, value in secrets.items():
        assert value not in text, f"{name} leaked into {label}"


def test_no_secret_reaches_manifest_ledger_events_or_json(embedded_pg, evidence_db, tmp_path, monkeypatch,
                                                         lineage_backend, capfd, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)
    info, creds = embedded_pg.info, embedded_pg.creds
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    for k, v in FAKE_SF.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("OPENLINEAGE_URL", lineage_backend)
    db = evidence_db["name"]
    # a password typed into the reference and into the ledger DSN: the worst case
    source = f"postgresql://recon:{creds['postgres_password']}@{info.host}:{info.port}/{db}#s.a"
    target = f"postgresql://recon_app@{info.host}:{info.port}/{db}#s.b"
    ledger_dsn = f"postgresql://recon_app:{creds['postgres_app_password']}@{info.host}:{info.port}/{db}"
    priv, pub = mf.keygen(tmp_path / "keys")
    out = tmp_path / "out"
    cfg = load(None)
    run = run_diff(DiffRequest(source=source, target=target, keys=(("id", "id"),), segment_rows=32), cfg)
    outputs = write_outputs(run, out)
    evidence = record_diff_evidence(run, config=cfg, outputs=outputs, ledger_dsn=ledger_dsn,
                                    manifest_path=out / "manifest.json", signing_key=priv)

    # it worked: manifest verifies with roots recomputed, ledger verifies, both events delivered
    rep = mf.verify_manifest(out / "manifest.json", pub, out)
    pred = rep.statement["predicate"]
    assert set(rep.roots) == {"source", "target"}
    assert pred["inputs"][0]["host"] == info.host and pred["inputs"][0]["database"] == db
    assert pred["inputs"][0]["object"] == "s.a" and pred["inputs"][0]["snapshot_id"]
    assert pred["ledger"]["run_seq"] == evidence["ledger"]["run_seq"]
    ledger_rep = lg.verify(ledger_dsn)
    assert ledger_rep.ok, ledger_rep.problems
    assert pred["ledger"]["size"] <= ledger_rep.rows
    # every manifest doubles as a signed external checkpoint of the ledger
    assert lg.verify(ledger_dsn, checkpoint_file=out / "manifest.json", pubkey=pub).ok
    with lg.Ledger(ledger_dsn) as led:
        rows = list(led.rows())
    by_table = {t: [r for r in rows if r[0] == t] for t in lg.TABLES}
    assert len(by_table["runs"]) == 1 and len(by_table["inputs"]) == 2
    kinds = [json.loads(r[5])["kind"] for r in by_table["lineage"]]
    assert kinds == ["openlineage_event", "openlineage_event", "manifest"]
    assert json.loads(by_table["lineage"][-1][5])["sha256"] == mf.file_digest(out / "manifest.json")
    assert [e["http_delivered"] for e in evidence["openlineage"]] == [True, True]
    assert [p for p, _, _ in _Sink.received] == ["/api/v1/lineage", "/api/v1/lineage"]
    files = sorted((out / "openlineage").glob("*.json"), key=lambda p: p.name.endswith("COMPLETE.json"))
    assert [body for _, _, body in _Sink.received] == [f.read_bytes() for f in files]  # same bytes, same digest
    assert all(h.get("Authorization") == f"Bearer {FAKE_SF['OPENLINEAGE_API_KEY']}" for _, h, _ in _Sink.received)

    # and no secret anywhere
    secrets = _secrets(embedded_pg)
    scanned = 0
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.parent.name != "keys":
            _scan(str(f), f.read_bytes().decode("utf-8", "replace"), secrets)
            scanned += 1
    assert scanned >= 8  # summary, differences, 2 snapshots + sidecar, 2 events, manifest
    envelope = json.loads((out / "manifest.json").read_text())
    _scan("the manifest payload", base64.b64decode(envelope["payload"]).decode(), secrets)
    for r in rows:
        _scan(f"ledger row {r[0]} seq {r[1]}", " ".join(map(str, r)), secrets)
    with psycopg.connect(embedded_pg.info.superuser_socket_dsn(db)) as c:
        bodies = c.execute("SELECT body::text FROM recon_audit.runs UNION ALL SELECT body::text FROM "
                           "recon_audit.inputs").fetchall()
    _scan("ledger bodies", json.dumps(bodies), secrets)
    _scan("diff --json", json.dumps(run.summary(), default=str), secrets)
    _scan("evidence result", json.dumps(evidence, default=str), secrets)
    _scan("ledger verify --json", json.dumps(ledger_rep.to_dict(), default=str), secrets)
    _scan("manifest verify --json", json.dumps(rep.to_dict(with_statement=True), default=str), secrets)
    _scan("sink bodies and headers (minus the API key header)",
          json.dumps([(p, {k: v for k, v in h.items() if k != "Authorization"}, b.decode())
                      for p, h, b in _Sink.received]), secrets)
    captured = capfd.readouterr()
    _scan("stdout/stderr", captured.out + captured.err, secrets)
    _scan("log records", "\n".join(r.getMessage() for r in caplog.records), secrets)

    # OpenLineage events: required fields, and a lossless round trip through the client's classes
    from openlineage.client.serde import Serde

    for f in files:
        text = f.read_text()
        data = json.loads(text)
        assert data["eventTime"] and data["producer"].startswith("https://") and data["schemaURL"]
        assert data["run"]["runId"] == evidence["run_id"] and data["job"] == {**data["job"], "name": "diff"}
        assert Serde.to_json(ol.event_from_dict(data)) == text
    complete = json.loads(files[-1].read_text())
    assert complete["eventType"] == "COMPLETE"
    assert [i["namespace"] for i in complete["inputs"]] == [f"postgres://{info.host}:{info.port}"] * 2
    assert [i["name"] for i in complete["inputs"]] == [f"{db}.s.a", f"{db}.s.b"]


def test_scrub_and_known_secrets_cover_dsns_pgpass_and_environment(embedded_pg, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    monkeypatch.setenv("SF_SECURITY_TOKEN", FAKE_SF["SF_SECURITY_TOKEN"])
    found = known_secrets(["postgresql://u:inline-pw-123@h/db#s.t", "host=h password=kw-pw-456 dbname=x"])
    creds = embedded_pg.creds
    for v in (creds["postgres_password"], creds["postgres_app_password"], creds["postgres_superuser_password"],
              FAKE_SF["SF_SECURITY_TOKEN"], "inline-pw-123", "kw-pw-456"):
        assert v in found
    dsn = f"postgresql://u:{creds['postgres_password']}@h/db"
    cleaned = scrub({"a": [dsn], "extract": {"dsn": "host=h password=kw-pw-456", "password": "kw-pw-456"}})
    assert cleaned == {"a": ["postgresql://u@h/db"], "extract": {"dsn": "host=h"}}
    check_no_secret(cleaned, found, "the summary")
    with pytest.raises(SecretInEvidence) as err:  # a long secret inside free text: recording stops
        check_no_secret({"a": [f"x{creds['postgres_password']}y"]}, found, "the summary")
    assert err.value.exit_code == 70 and creds["postgres_password"] not in str(err.value)


@pytest.fixture()
def short_pw_role(embedded_pg, evidence_db):  # noqa: ANN001, ANN201
    """A login role whose password is a number the diff's results also hold: `0.00` is inside the
    amount `20.00`, which is also the variance itself."""
    role = f"evsec_short_{uuid.uuid4().hex[:8]}"
    su = embedded_pg.info.superuser_socket_dsn(evidence_db["name"])
    with psycopg.connect(su, autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN PASSWORD '0.00'")
        c.execute(f"GRANT USAGE ON SCHEMA s TO {role}")
        c.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA s TO {role}")
    yield role
    with psycopg.connect(su, autocommit=True) as c:
        c.execute(f"DROP OWNED BY {role}")
        c.execute(f"DROP ROLE {role}")


def test_a_short_password_leaves_the_results_intact_and_dsns_redacted(
        embedded_pg, evidence_db, short_pw_role, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    info, creds = embedded_pg.info, embedded_pg.creds
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    monkeypatch.delenv("OPENLINEAGE_URL", raising=False)
    db, role = evidence_db["name"], short_pw_role
    # the password as a URI password, and as a percent-encoded keyword of the query string
    source = f"postgresql://{role}:0.00@{info.host}:{info.port}/{db}#s.a"
    target = f"postgresql://{role}@{info.host}:{info.port}/{db}?pass%77ord=0.00#s.b"
    ledger_dsn = f"postgresql://recon_app:{creds['postgres_app_password']}@{info.host}:{info.port}/{db}"
    priv, pub = mf.keygen(tmp_path / "keys")
    out = tmp_path / "out"
    cfg = load(None)
    run = run_diff(DiffRequest(source=source, target=target, keys=(("id", "id"),), segment_rows=32), cfg)
    expected = json.loads(json.dumps(run.summary(), default=str))
    assert expected["columns"]["amount"]["abs_variance"] == "20.00"
    # Σ|source| over the keys on both sides (acct0050 is missing from the target: 30150.00 − 75.00)
    assert expected["columns"]["amount"]["source_abs_total"] == "30075.00"
    outputs = write_outputs(run, out)
    evidence = record_diff_evidence(run, config=cfg, outputs=outputs, ledger_dsn=ledger_dsn,
                                    manifest_path=out / "manifest.json", signing_key=priv)

    # the signed results are the computed ones, digit for digit
    rep = mf.verify_manifest(out / "manifest.json", pub, out)
    results = rep.statement["predicate"]["results"]
    assert results["columns"] == expected["columns"]
    for k in ("missing_in_target", "mismatched", "unchanged", "merkle", "divergent_ranges", "key"):
        assert results[k] == expected[k], k
    with lg.Ledger(ledger_dsn) as led:
        rows = list(led.rows())
    run_body = json.loads(next(r for r in rows if r[0] == "runs")[5])
    assert run_body["summary"]["columns"] == expected["columns"]
    # the DSNs are there, without their password
    assert results["source"]["ref"] == f"postgresql://{role}@{info.host}:{info.port}/{db}#s.a"
    assert results["target"]["ref"] == f"postgresql://{role}@{info.host}:{info.port}/{db}#s.b"
    assert evidence["ledger"]["ledger"] == f"postgresql://recon_app@{info.host}:{info.port}/{db}"
    texts = {"manifest": base64.b64decode(json.loads((out / "manifest.json").read_text())["payload"]).decode(),
             "ledger": json.dumps([list(map(str, r)) for r in rows]), "evidence": json.dumps(evidence, default=str),
             **{f.name: f.read_text() for f in (out / "openlineage").glob("*.json")}}
    assert len(texts) == 5
    for where, text in texts.items():
        assert ":0.00@" not in text and "=0.00" not in text and "pass%77ord" not in text, where
        assert creds["postgres_app_password"] not in text, where
        assert "2***" not in text and "***" not in text.replace('"***"', ""), where


def test_a_password_equal_to_a_result_value_stops_the_evidence(
        embedded_pg, evidence_db, short_pw_role, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """`20.00` is both the password and the variance: a leak cannot be told from a coincidence, so
    nothing is recorded (exit 70) rather than a signed summary with the value blanked or kept."""
    info, creds = embedded_pg.info, embedded_pg.creds
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    monkeypatch.delenv("OPENLINEAGE_URL", raising=False)
    db, role = evidence_db["name"], short_pw_role
    with psycopg.connect(embedded_pg.info.superuser_socket_dsn(db), autocommit=True) as c:
        c.execute(f"ALTER ROLE {role} PASSWORD '20.00'")
    source = f"postgresql://{role}:20.00@{info.host}:{info.port}/{db}#s.a"
    target = f"postgresql://{role}:20.00@{info.host}:{info.port}/{db}#s.b"
    ledger_dsn = f"postgresql://recon_app:{creds['postgres_app_password']}@{info.host}:{info.port}/{db}"
    priv, _ = mf.keygen(tmp_path / "keys")
    out = tmp_path / "out"
    cfg = load(None)
    run = run_diff(DiffRequest(source=source, target=target, keys=(("id", "id"),), segment_rows=32), cfg)
    outputs = write_outputs(run, out)
    with pytest.raises(SecretInEvidence) as err:
        record_diff_evidence(run, config=cfg, outputs=outputs, ledger_dsn=ledger_dsn,
                             manifest_path=out / "manifest.json", signing_key=priv)
    assert err.value.exit_code == 70 and "20.00" not in str(err.value) and "\n" not in str(err.value)
    assert not (out / "manifest.json").exists() and not (out / "openlineage").exists()
    assert not list(out.glob("snapshot*"))
    with lg.Ledger(ledger_dsn) as led:
        assert not [r for r in led.rows() if r[0] == "runs"]
