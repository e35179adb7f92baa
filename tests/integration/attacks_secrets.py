# ruff: noqa: S608 - victim tables are built from generated names
"""Issue 16, "nothing secret leaks": DSN passwords in every spelling libpq accepts, a short password
that is also a number of the results, and Kafka credentials put into recon.toml.

Each row makes its own victim (a schema and a login role with a unique name in the scenario's
database, a copy of the scenario's config) and removes the schema and role afterwards.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import Stack

SHORT_PW = "50.00"  # inside the amount total 30150.00 of the victim diff


def _superuser(stack: Stack) -> str:
    """The superuser over the stack's Unix socket (trust auth), in the scenario's database."""
    return make_conninfo(stack.endpoints["postgres_socket_dsn"], user="postgres")


def _tcp(stack: Stack) -> dict[str, str]:
    d = conninfo_to_dict(stack.endpoints["postgres_dsn"])
    return {"host": str(d["host"]), "port": str(d["port"]), "db": str(d["dbname"])}


def _victim(stack: Stack, tmp: Path) -> dict:
    """Schema ``h16d_<hex>`` with two equal tables a and b (200 rows, amounts 1.50 … 300.00, so the
    diff exits 0) and a login role of the same name whose password is :data:`SHORT_PW`; a signing
    key in tmp."""
    from engine.evidence import manifest as mf

    name = f"h16d_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_superuser(stack), autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {name}")
        for t in ("a", "b"):
            c.execute(f'CREATE TABLE {name}.{t} (id text COLLATE "C" PRIMARY KEY, amount numeric(12,2), name text)')
            c.execute(f"INSERT INTO {name}.{t} SELECT 'acct' || lpad(g::text, 4, '0'), g * 1.5, 'n' || g "
                      "FROM generate_series(1, 200) g")
        c.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{SHORT_PW}'")
        c.execute(f"GRANT USAGE ON SCHEMA {name} TO {name}")
        c.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {name} TO {name}")
    priv, _ = mf.keygen(tmp / "keys")
    return {"name": name, "key": str(priv), **_tcp(stack)}


def _drop_victim(stack: Stack, name: str) -> None:
    with psycopg.connect(_superuser(stack), autocommit=True) as c:
        c.execute(f"DROP SCHEMA {name} CASCADE")
        c.execute(f"DROP OWNED BY {name}")
        c.execute(f"DROP ROLE {name}")


def _scrub_command(stack: Stack, tmp: Path, ctx: dict) -> list[str]:
    at = f"{ctx['host']}:{ctx['port']}/{ctx['db']}"
    return ["diff", f"postgresql://{ctx['name']}:{SHORT_PW}@{at}#{ctx['name']}.a",
            f"postgresql://{ctx['name']}@{at}?pass%77ord={SHORT_PW}#{ctx['name']}.b", "-k", "id",
            "--out", str(tmp / "out"), "--manifest", str(tmp / "out" / "manifest.json"),
            "--signing-key", ctx["key"], "--json"]


def _scrub_after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    try:
        out = tmp / "out"
        summary = json.loads((out / "summary.json").read_text())
        amount = summary["columns"]["amount"]
        assert (amount["abs_variance"], amount["source_abs_total"]) == ("0.00", "30150.00"), amount
        payload = json.loads(base64.b64decode(json.loads((out / "manifest.json").read_text())["payload"]))
        results = payload["predicate"]["results"]
        assert results["columns"] == summary["columns"], results["columns"]  # signed digit for digit
        assert results["unchanged"] == 200 and results["merkle"] == summary["merkle"]
        at = f"{ctx['host']}:{ctx['port']}/{ctx['db']}"
        assert results["source"]["ref"] == f"postgresql://{ctx['name']}@{at}#{ctx['name']}.a"
        assert results["target"]["ref"] == f"postgresql://{ctx['name']}@{at}#{ctx['name']}.b"
        texts = [run.stdout, run.stderr, json.dumps(payload)]
        texts += [f.read_text() for f in out.rglob("*.json")]
        assert len(texts) >= 7  # summary, manifest, sidecar, two lineage events
        for text in texts:
            assert f":{SHORT_PW}@" not in text and "pass%77ord" not in text and "***" not in text
        with psycopg.connect(_superuser(stack)) as c:  # the victim tables are untouched
            counts = [c.execute(f"SELECT count(*) FROM {ctx['name']}.{t}").fetchone()[0] for t in ("a", "b")]
        assert counts == [200, 200]
    finally:
        _drop_victim(stack, ctx["name"])


def _dsn_command(stack: Stack, tmp: Path, ctx: dict) -> list[str]:
    """A wrong password spelled as a percent-encoded keyword, to a table that does not exist."""
    at = f"{ctx['host']}:{ctx['port']}/{ctx['db']}"
    return ["diff", f"postgresql://{ctx['name']}@{at}?pass%77ord=wr0ng-s3cret#{ctx['name']}.nope",
            f"postgresql://{ctx['name']}@{at}?password='wr0ng s3cret'#{ctx['name']}.b", "-k", "id"]


def _dsn_after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    try:
        assert "wr0ng" not in run.stderr + run.stdout and "s3cret" not in run.stderr + run.stdout, run.stderr
    finally:
        _drop_victim(stack, ctx["name"])


def _kafka_config(line: str):  # noqa: ANN202 - returns a setup callable
    def setup(stack: Stack, tmp: Path) -> dict:
        cfg = tmp / "recon.toml"
        cfg.write_text(stack.config.read_text().replace("[kafka]\n", f"[kafka]\n{line}\n", 1))
        return {"config": str(cfg)}
    return setup


def _kafka_after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    assert "--kafka-config FILE" in run.stderr and "[kafka]" in run.stderr, run.stderr
    assert "hunter2" not in run.stderr + run.stdout
    assert run.stdout == "" and not (tmp / "out").exists()  # nothing read, nothing written


ATTACKS = [
    Attack("16.s-dsn", "percent-encoded-and-quoted-dsn-password",
           "postgresql://u@h/db?pass%77ord=… and ?password='a b' in a reference that fails",
           _dsn_command, 2, _dsn_after, setup=_victim),
    Attack("16.s-scrub", "short-password-is-a-result-value",
           f"DSN password {SHORT_PW!r} (also inside the amount total 30150.00), diff with --manifest",
           _scrub_command, 0, _scrub_after, setup=_victim),
    Attack("16.s-kafka", "sasl-password-in-config",
           '[kafka] "sasl.password" = "hunter2" in recon.toml, recon kafka-audit -C',
           lambda s, t, ctx: ["kafka-audit", "-C", ctx["config"], "--json"], 2, _kafka_after,
           setup=_kafka_config('"sasl.password" = "hunter2-kafka"')),
    Attack("16.s-kafka", "dotted-oauth-secret-in-config",
           "[kafka] sasl.oauthbearer.client.secret = … (a TOML dotted key), recon diff --mapping -C --out",
           lambda s, t, ctx: ["diff", "--mapping", "clv", "-C", ctx["config"], "--out", str(t / "out")], 2,
           _kafka_after, setup=_kafka_config('sasl.oauthbearer.client.secret = "hunter2-kafka"')),
]
