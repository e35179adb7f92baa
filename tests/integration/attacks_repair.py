# ruff: noqa: S608 - the setup's SQL names the row's own fixed schema and table
"""Item 17.6: `recon repair --apply` must not weaken the table it versions.

Each row gets its own schema ``adv_repair_<row>`` holding ``clv``, a copy of the scenario's
``warehouse.customer_clv`` with one guard added (a CHECK constraint, a row-level security policy,
column grants, a trigger, a dependent view, an inbound foreign key), and repairs it with the plan
of the scenario's own incident (``--target`` names the copy; the scenario's tables are never
written). The diff and explain run once per stack, under a copy of ``recon.toml`` without the
ledger so the shared ledger is not written either. Afterwards the guard must be present and
enforced on the version store and the view — or, where it cannot be carried, the run must end with
exit 2 naming it and the table must be as it was.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import psycopg

from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import SCENARIO_ACCOUNTS, Stack

_EXPLAINED: dict[str, tuple[Path, Path]] = {}


def _explained(stack: Stack) -> tuple[Path, Path]:
    """(config without the ledger, explain directory) for the scenario's incident, made once; the
    diff and the explain sign manifests with a key of their own (``keys/recon.pub`` next to them),
    which `repair --apply --key` verifies them by (17.1)."""
    got = _EXPLAINED.get(str(stack.state))
    if got is not None:
        return got
    base = stack.state.parent / "adv_repair"
    base.mkdir(exist_ok=True)
    cfg = base / "recon.toml"
    cfg.write_text(re.sub(r"(?m)^\[ledger\]\n(?:[^\[\n].*\n)*", "", stack.config.read_text()))
    keys = stack.run("keygen", "--out", str(base / "keys"), "--force")
    assert keys.returncode == 0, keys.stderr
    sign = ["--signing-key", str(base / "keys" / "recon.key")]
    d = stack.run("diff", "-C", str(cfg), "--mapping", "clv", "--out", str(base / "diff"),
                  "--manifest", str(base / "diff" / "manifest.json"), *sign)
    assert d.returncode == 1, d.stderr
    ex = stack.run("explain", "--diff", str(base / "diff"), "-C", str(cfg), "--out", str(base / "explain"),
                   "--manifest", str(base / "explain" / "manifest.json"), *sign)
    assert ex.returncode == 1, ex.stderr
    _EXPLAINED[str(stack.state)] = (cfg, base / "explain")
    return _EXPLAINED[str(stack.state)]


def _db(stack: Stack, role: str = "recon") -> psycopg.Connection:
    dsn = stack.endpoints["postgres_socket_dsn"].replace("postgresql://recon@", f"postgresql://{role}@", 1)
    return psycopg.connect(dsn, autocommit=True)


def _setup(name: str, guard: str) -> object:
    schema = f"adv_repair_{name}"

    def setup(stack: Stack, tmp: Path) -> dict:
        cfg, explain = _explained(stack)
        with _db(stack) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            c.execute(f"CREATE SCHEMA {schema}")
            c.execute(f"GRANT USAGE ON SCHEMA {schema} TO recon_app")
            c.execute(f"CREATE TABLE {schema}.clv (LIKE warehouse.customer_clv INCLUDING ALL)")
            c.execute(f"INSERT INTO {schema}.clv SELECT * FROM warehouse.customer_clv")
            c.execute(guard.format(s=schema))
        return {"schema": schema, "cfg": cfg, "explain": explain}
    return setup


def _repair(stack: Stack, tmp: Path, ctx: dict) -> list[str]:
    target = f"{stack.endpoints['postgres_dsn']}#{ctx['schema']}.clv"
    return ["repair", "--from-explain", str(ctx["explain"]), "-C", str(ctx["cfg"]), "--apply", "--target", target,
            "--out", str(tmp / "repair"), "--key", str(ctx["explain"].parent / "keys" / "recon.pub"),
            "--json"]  # --json: no progress lines, so an error is the one line


def _versioned(c: psycopg.Connection, s: str) -> None:
    """Repaired: the table is the view over its history, with repairs, one current row per account."""
    kind = c.execute("SELECT relkind::text FROM pg_class WHERE oid = %s::regclass", (f"{s}.clv",)).fetchone()
    assert kind == ("v",), kind
    n, repairs, current = c.execute(f"SELECT count(*), count(*) FILTER (WHERE source = 'repair'), "
                                    f"count(*) FILTER (WHERE valid_to IS NULL) FROM {s}.clv_versions").fetchone()  # type: ignore[misc]
    assert repairs > 0 and n > current, (n, repairs, current)
    assert c.execute(f"SELECT count(*) FROM {s}.clv").fetchone()[0] == current  # type: ignore[index]


def _unchanged(words: str) -> object:
    def after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
        s = ctx["schema"]
        assert words in run.stderr and "nothing was changed" in run.stderr, run.stderr
        with _db(stack) as c:
            kind = c.execute("SELECT relkind::text FROM pg_class WHERE oid = %s::regclass", (f"{s}.clv",)).fetchone()
            assert kind == ("r",), kind
            assert c.execute("SELECT to_regclass(%s)", (f"{s}.clv_versions",)).fetchone() == (None,)
            same = c.execute(f"SELECT count(*) FROM ((TABLE {s}.clv EXCEPT TABLE warehouse.customer_clv) UNION ALL "
                             f"(TABLE warehouse.customer_clv EXCEPT TABLE {s}.clv)) AS d").fetchone()[0]  # type: ignore[index]
            assert same == 0, same  # the copy is row for row as it was
    return after


def _check_holds(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    s = ctx["schema"]
    with _db(stack) as c:
        _versioned(c, s)
        got = c.execute("SELECT convalidated FROM pg_constraint WHERE conname = 'adv_sf_id' AND conrelid = "
                        "%s::regclass", (f"{s}.clv_versions",)).fetchone()
        assert got == (True,), got
        try:
            c.execute(f"INSERT INTO {s}.clv VALUES ('short', 1, 1, now())")
            raise AssertionError("the CHECK constraint let a bad row in through the view")
        except psycopg.errors.CheckViolation:
            pass


def _outside(md5_prefix_at_least: str) -> str:
    """An 18-character id the policy hides (its md5 starts at or after the prefix)."""
    i = 0
    while True:
        cand = f"001ADV{i:012d}"
        if hashlib.md5(cand.encode()).hexdigest() >= md5_prefix_at_least:  # noqa: S324 - the policy's own hash
            return cand
        i += 1


def _rls_holds(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    s = ctx["schema"]
    with _db(stack) as c:
        _versioned(c, s)
        visible = c.execute(f"SELECT count(*) FROM {s}.clv WHERE md5(account_id) < '8'").fetchone()[0]  # type: ignore[index]
        opts = c.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", (f"{s}.clv",)).fetchone()[0]  # type: ignore[index]
        assert "security_invoker=true" in (opts or []), opts
    assert 0 < visible < SCENARIO_ACCOUNTS
    with _db(stack, "recon_app") as app:
        assert app.execute(f"SELECT count(*) FROM {s}.clv").fetchone()[0] == visible  # type: ignore[index]
        assert app.execute(f"SELECT count(*) FROM {s}.clv_versions WHERE md5(account_id) >= '8'").fetchone()[0] == 0  # type: ignore[index]
        try:
            app.execute(f"INSERT INTO {s}.clv VALUES (%s, 1, 1, now())", (_outside("8"),))
            raise AssertionError("the policy let recon_app write a row it may not see")
        except psycopg.errors.InsufficientPrivilege as exc:
            assert "row-level security" in str(exc), exc


def _grants_hold(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    s = ctx["schema"]
    with _db(stack) as c:
        _versioned(c, s)
        total = c.execute(f"SELECT count(*) FROM {s}.clv").fetchone()[0]  # type: ignore[index]
    with _db(stack, "recon_app") as app:
        assert app.execute(f"SELECT count(clv) FROM {s}.clv").fetchone()[0] == total  # type: ignore[index]
        for stmt in (f"SELECT updated_at FROM {s}.clv", f"SELECT updated_at FROM {s}.clv_versions",
                     f"UPDATE {s}.clv SET clv = 0"):
            try:
                app.execute(stmt)
                raise AssertionError(f"recon_app may now run {stmt}")
            except psycopg.errors.InsufficientPrivilege:
                pass


def _trigger_holds(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    s = ctx["schema"]
    with _db(stack) as c:
        _versioned(c, s)
        acc = c.execute(f"SELECT min(account_id) FROM {s}.clv").fetchone()[0]  # type: ignore[index]
        try:
            c.execute(f"UPDATE {s}.clv SET clv = -1 WHERE account_id = %s", (acc,))
            raise AssertionError("the trigger did not fire on a write through the view")
        except psycopg.errors.RaiseException as exc:
            assert "adv: negative clv" in str(exc), exc
        c.execute(f"UPDATE {s}.clv SET clv = 5 WHERE account_id = %s", (acc,))  # allowed writes still version
        hist = c.execute(f"SELECT source FROM {s}.clv_versions WHERE account_id = %s AND valid_to IS NULL",
                         (acc,)).fetchall()
        assert hist == [("load",)], hist


def _view_current(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
    s = ctx["schema"]
    with _db(stack) as c:
        _versioned(c, s)
        want = c.execute(f"SELECT count(*) FROM {s}.clv WHERE clv > 0").fetchone()[0]  # type: ignore[index]
        rows, ids = c.execute(f"SELECT count(*), count(DISTINCT account_id) FROM {s}.top").fetchone()  # type: ignore[misc]
        assert rows == ids == want, (rows, ids, want)
    with _db(stack, "recon_app") as app:
        assert app.execute(f"SELECT count(*) FROM {s}.top").fetchone()[0] == want  # type: ignore[index]


_NEGATIVE = """CREATE FUNCTION {s}.no_negative() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.clv < 0 THEN RAISE EXCEPTION 'adv: negative clv for %', NEW.account_id; END IF; RETURN NEW; END $$;
CREATE TRIGGER adv_no_negative BEFORE INSERT OR UPDATE ON {s}.clv FOR EACH ROW EXECUTE FUNCTION {s}.no_negative()"""

ATTACKS = [
    Attack("17.6", "check-constraint", "CHECK (length(account_id) = 18) on the table repair versions", _repair, 0,
           _check_holds, _setup("check", "ALTER TABLE {s}.clv ADD CONSTRAINT adv_sf_id "  # type: ignore[arg-type]
                                          "CHECK (length(account_id) = 18)")),
    Attack("17.6", "rls-policy", "a row-level security policy hiding half the rows from recon_app", _repair, 0,
           _rls_holds, _setup("rls", "ALTER TABLE {s}.clv ENABLE ROW LEVEL SECURITY; "  # type: ignore[arg-type]
                                     "CREATE POLICY adv_half ON {s}.clv TO recon_app USING (md5(account_id) < '8'); "
                                     "GRANT SELECT, INSERT ON {s}.clv TO recon_app")),
    Attack("17.6", "column-grant", "GRANT SELECT (account_id, clv) ON the table TO recon_app", _repair, 0,
           _grants_hold, _setup("grant", "GRANT SELECT (account_id, clv) ON {s}.clv TO recon_app")),  # type: ignore[arg-type]
    Attack("17.6", "trigger", "a BEFORE row trigger refusing negative values", _repair, 0, _trigger_holds,
           _setup("trigger", _NEGATIVE)),  # type: ignore[arg-type]
    Attack("17.6", "dependent-view", "a view over the table (and a grant on it)", _repair, 0, _view_current,
           _setup("view", "CREATE VIEW {s}.top AS SELECT account_id, clv FROM {s}.clv WHERE clv > 0; "  # type: ignore[arg-type]
                          "GRANT SELECT ON {s}.top TO recon_app")),
    Attack("17.6", "inbound-fk", "a foreign key from another table to the one repair versions", _repair, 2,
           _unchanged("foreign key adv_child_fk"),  # type: ignore[arg-type]
           _setup("fk", 'CREATE TABLE {s}.child (id int PRIMARY KEY, account_id text COLLATE "C" '  # type: ignore[arg-type]
                        "CONSTRAINT adv_child_fk REFERENCES {s}.clv); "
                        "INSERT INTO {s}.child SELECT 1, min(account_id) FROM {s}.clv")),
    Attack("17.6", "after-row-trigger", "an AFTER row trigger, which a view cannot carry", _repair, 2,
           _unchanged("trigger adv_audit"),  # type: ignore[arg-type]
           _setup("after", "CREATE FUNCTION {s}.audit() RETURNS trigger LANGUAGE plpgsql AS "  # type: ignore[arg-type]
                           "$$ BEGIN RETURN NULL; END $$; CREATE TRIGGER adv_audit AFTER UPDATE ON {s}.clv "
                           "FOR EACH ROW EXECUTE FUNCTION {s}.audit()")),
]
