"""The evidence keeps the results as computed: a short password (``1.00``) that also occurs inside
the amounts leaves them alone, DSN fields lose their credentials, and a value that *is* a secret
stops the recording before anything is written."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from engine.app.evidence import SecretInEvidence, record_evidence
from engine.evidence import manifest as mf

SUMMARY = {
    "source": {"rows": 1100, "ref": "postgresql://u:1.00@db.example:5432/w#s.a",
               "extract": {"dsn": "host=db.example dbname=w password='1.00'", "rows": 1100}},
    "target": {"ref": "postgresql://u@db.example:5432/w?pass%77ord=1.00#s.b",
               "extract": {"dsn": "postgresql://u@db.example:5432/w?pass%77ord=1.00"}},
    "columns": {"clv": {"abs_variance": "11.00", "net_variance": "-21.005", "source_abs_total": "1.0011"},
                "password": {"abs_variance": None}},  # a column named password is data
    "compared_columns": {"clv": "decimal:2", "password": "text"},
    "key": ["id=id"],
}


def _record(tmp_path: Path, summary: dict, **kw: object) -> dict:
    priv, _ = mf.keygen(tmp_path / "keys")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary))
    inp = mf.describe_input("source", {"system": "postgresql", "dsn": "postgresql://u:1.00@db.example:5432/w",
                                       "object": "s.a", "rows": 1100})
    return record_evidence("diff", summary, [inp], [out / "summary.json"], ledger_dsn=None,
                           manifest_path=out / "manifest.json", signing_key=priv, config_digest="0" * 64, **kw)


def test_a_short_password_leaves_the_results_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "1.00")
    monkeypatch.setenv("SF_PASSWORD", "clv")
    _record(tmp_path, SUMMARY)
    envelope = json.loads((tmp_path / "out" / "manifest.json").read_text())
    results = json.loads(base64.b64decode(envelope["payload"]))["predicate"]["results"]
    assert results["columns"] == SUMMARY["columns"] and results["compared_columns"] == SUMMARY["compared_columns"]
    assert results["source"]["ref"] == "postgresql://u@db.example:5432/w#s.a"
    assert results["source"]["extract"] == {"dsn": "dbname=w host=db.example", "rows": 1100}
    # libpq reads '1.00#s.b' as the password here, so the suffix goes with it (refs split it off first)
    assert results["target"]["ref"] == "postgresql://u@db.example:5432/w"
    assert results["target"]["extract"]["dsn"] == "postgresql://u@db.example:5432/w"
    texts = [(tmp_path / "out" / "manifest.json").read_text(), json.dumps(results)]
    texts += [p.read_text() for p in (tmp_path / "out" / "openlineage").iterdir()]
    for text in texts:
        assert "***" not in text and ":1.00@" not in text and "=1.00" not in text and "'1.00'" not in text


def test_a_value_that_is_a_secret_stops_the_recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "11.00")  # the whole value of abs_variance: a leak or not, it is refused
    with pytest.raises(SecretInEvidence) as err:
        _record(tmp_path, SUMMARY)
    msg = str(err.value)
    assert err.value.exit_code == 70 and "columns.clv.abs_variance" in msg and "11.00" not in msg
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / "openlineage").exists()


def test_credential_fields_are_dropped_and_error_text_scrubbed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_PASSWORD", "hunter2-pw")
    summary = {**SUMMARY, "salesforce": {"username": "u@x", "session_id": "00Dx!AQ", "password": "p"}}
    _record(tmp_path, summary, status="FAIL", error="login refused for hunter2-pw")
    envelope = json.loads((tmp_path / "out" / "manifest.json").read_text())
    pred = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert pred["results"]["salesforce"] == {"username": "u@x"}
    assert pred["error"] == "login refused for ***"


def test_a_password_equal_to_the_user_name_does_not_block_every_run() -> None:
    """The common postgres/postgres setup: the inputs name the user, which equals the password.
    A location field (host, port, database, user) is a name, never a secret; elsewhere the value
    still stops the recording."""
    from engine.app.evidence import SecretInEvidence, check_no_secret

    check_no_secret({"inputs": [{"user": "postgres", "database": "postgres", "host": "db", "port": "5432"}]},
                    {"postgres"}, "the run")
    with pytest.raises(SecretInEvidence):
        check_no_secret({"inputs": [{"note": "postgres"}]}, {"postgres"}, "the run")
