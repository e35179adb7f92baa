"""Incremental diffs against a real PostgreSQL (issue 19): after every run of a random sequence of
inserts, updates and deletes on both sides, the incremental summary and roots equal a full read
with the state's boundaries; a transaction that commits after a run's watermark is not lost; the
state is checked before it is trusted."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine.app.diff import DiffOptions
from engine.config import load
from engine.core.errors import UsageError, VerificationError

COUNTS = ("missing_in_target", "missing_in_source", "mismatched", "unchanged", "distinct_keys", "columns",
          "duplicate_keys", "variance_ratio")


def _conn(pg: Any) -> psycopg.Connection:
    return psycopg.connect(pg.info.dsn, autocommit=True, passfile=str(pg.paths.pgpass_file))


@pytest.fixture()
def tables(embedded_pg: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    with _conn(embedded_pg) as c:
        c.execute("DROP SCHEMA IF EXISTS inc CASCADE")
        c.execute("CREATE SCHEMA inc")
        c.execute("CREATE FUNCTION inc.touch() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$")
        for t in ("s", "t"):
            c.execute(f"CREATE TABLE inc.{t} (k text PRIMARY KEY, v numeric(14,2), n int, "
                      "updated_at timestamptz NOT NULL DEFAULT now())")
            c.execute(f"CREATE TRIGGER touch BEFORE UPDATE ON inc.{t} FOR EACH ROW EXECUTE FUNCTION inc.touch()")
        # loaded an hour ago: a first run's overlap does not reach them
        c.execute("INSERT INTO inc.s (k, v, n, updated_at) SELECT 'k' || lpad(i::text, 5, '0'), i / 4.0, i % 7, "
                  "now() - interval '1 hour' FROM generate_series(1, 1500) i")
        c.execute("INSERT INTO inc.t (k, v, n, updated_at) SELECT k, CASE WHEN n = 3 THEN v + 0.01 ELSE v END, n, "
                  "updated_at FROM inc.s WHERE k NOT LIKE '%7'")
    dsn = embedded_pg.info.dsn
    return {"source": f"{dsn}#inc.s", "target": f"{dsn}#inc.t", "pg": embedded_pg}


def _opts(tables: dict[str, Any], state: Path, **kw: Any) -> DiffOptions:
    return DiffOptions(source=tables["source"], target=tables["target"], keys=(("k", "k"),),
                       columns=(("v", "v"), ("n", "n")), segment_rows=64, state=state, **kw)


def _run_req(opts: DiffOptions, cfg: Any) -> dict[str, Any]:
    from engine.app import reconcile

    fields = opts.resolve(cfg)
    fields["target_updated_at"] = "updated_at"
    fields["source_updated_at"] = "updated_at"
    d = reconcile.run_diff(reconcile.DiffRequest(**fields), cfg, state=opts.state_options(cfg))
    s = d.summary()
    s["_differences"] = d.result.differences.sort(["key", "kind", "column"], nulls_last=True)
    return s


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for k in COUNTS:
        assert a[k] == b[k], k
    assert a["merkle"] == b["merkle"]
    assert a["source"]["rows"] == b["source"]["rows"] and a["target"]["rows"] == b["target"]["rows"]
    assert a["_differences"].equals(b["_differences"])


def _mutate(c: psycopg.Connection, rng: random.Random, step: int) -> None:
    for t in ("s", "t"):
        keys = [r[0] for r in c.execute(f"SELECT k FROM inc.{t} ORDER BY k").fetchall()]  # noqa: S608
        for k in rng.sample(keys, 6):
            c.execute(f"UPDATE inc.{t} SET v = v + %s WHERE k = %s", (rng.choice(["0.01", "1", "-2.5"]), k))  # noqa: S608
        for k in rng.sample(keys, 3):
            c.execute(f"DELETE FROM inc.{t} WHERE k = %s", (k,))  # noqa: S608
        for i in range(4):
            c.execute(f"INSERT INTO inc.{t} (k, v, n) VALUES (%s, %s, %s) ON CONFLICT (k) DO UPDATE SET n = 0",  # noqa: S608
                      (f"n{step:02d}{i}{rng.choice('ab')}", f"{rng.randint(0, 9999)}.25", i))
    # a burst into one key range: its segment grows past twice the segment size and is split
    if step == 4:
        for t in ("s", "t"):
            c.execute(f"INSERT INTO inc.{t} (k, v, n) SELECT 'k00100x' || i, i, 1 FROM generate_series(1, 200) i")  # noqa: S608


def test_incremental_runs_equal_a_full_read_with_the_same_boundaries(tables: dict[str, Any], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.app import incremental

    seen: dict[str, Any] = {}
    run_state = incremental.run_state

    def spy(*a: Any, **kw: Any) -> Any:  # the fields the runs hash with, to check the stored rows with
        seen.update(source=kw["fields_s"], target=kw["fields_t"])
        return run_state(*a, **kw)

    monkeypatch.setattr(incremental, "run_state", spy)
    state = tmp_path / "state"
    first = _run_req(_opts(tables, state), load(None))
    assert first["incremental"]["mode"] == "full" and "first run" in first["incremental"]["reason"]
    rng = random.Random(19)
    prev = first
    compacted = 0
    with _conn(tables["pg"]) as c:
        for step in range(10):
            _mutate(c, rng, step)
            check = tmp_path / f"check{step}"
            shutil.copytree(state, check)
            inc = _run_req(_opts(tables, state), load(None))
            assert inc["incremental"]["mode"] == "incremental", inc["incremental"]
            assert inc["status"] == "ok"
            assert 0 < inc["incremental"]["touched_segments"] <= inc["incremental"]["segments"]
            for side in ("source", "target"):  # 3 unlisted deletions a side, found through the key's index
                d = inc["incremental"]["sides"][side]["deletions"]
                assert (d["found"], d["by"]) == (3, "range counts"), (step, side, d)
            full = _run_req(_opts(tables, check, verify_full=True), load(None))
            assert full["incremental"]["full_check"]["equal"], (step, full["incremental"]["full_check"])
            _same(inc, full)
            # re-read = the rows at or past the last run's lower bound less the overlap, exactly: what
            # changed since (plus what the 1 s overlap or a transaction still open then reaches back to)
            lower = prev["incremental"]["watermarks"]["source"]["lower_next"]
            (due,) = c.execute("SELECT count(*) FROM inc.s WHERE updated_at >= %s::timestamptz - interval '1 second'",
                               (lower,)).fetchone()
            assert inc["incremental"]["sides"]["source"]["rows_reread"] == due < 1500, (step, lower)
            prev = inc
            assert _mostly_used(state), step
            assert _every_segment_checks(state, seen) == (inc["source"]["rows"], inc["target"]["rows"]), step
            compacted += bool(inc["incremental"].get("compacted"))
            if step == 4:
                assert inc["incremental"]["split_segments"] > 0
            shutil.rmtree(check)
    assert compacted >= 3  # packs emptied by the runs' rewrites were compacted, not kept


def _every_segment_checks(state: Path, fields: dict[str, Any]) -> tuple[int, int]:
    """Every stored segment of both sides loaded and checked against its digest (the roots a full
    check compares are built from the index's digests, not from the stored rows): rows a side."""
    from engine.app.incremental import _Packs, _segments_of
    from engine.workspace import StateDirectory

    sd = StateDirectory(state)
    index = sd.load_index()
    store = _Packs(sd)
    rows = [store.load(_segments_of(sd, index, side), fields[side]).height for side in ("source", "target")]
    return rows[0], rows[1]


def _mostly_used(state: Path) -> bool:
    """Whether every pack, other than the last run's own, still holds at least a quarter of rows the
    index names (the compaction rule): a state whose packs are mostly unused grows on disk run after
    run."""
    import json

    import pyarrow as pa

    index = json.loads((state / "state.json").read_text())
    for side in ("source", "target"):
        seg = index["sides"][side]["segments"]
        used: dict[str, int] = {}
        for f, r in zip(seg["file"], seg["rows"], strict=True):
            used[seg["files"][f]] = used.get(seg["files"][f], 0) + int(r)
        for name, n in used.items():
            if Path(name).name.startswith(f"{int(index['generation']):06d}-"):
                continue
            with pa.memory_map(str(state / name)) as m:
                total = pa.ipc.open_file(m).read_all().num_rows
            if 4 * n < total:  # below a quarter in use (README, "The state")
                return False
    return True


def _deletions_after(tables: dict[str, Any], state: Path, *statements: str
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A first run, ``statements``, an incremental run: both summaries and the source's deletions."""
    first = _run_req(_opts(tables, state), load(None))
    with _conn(tables["pg"]) as c:
        for q in statements:
            c.execute(q)  # type: ignore[arg-type]
    inc = _run_req(_opts(tables, state), load(None))
    return first, inc, inc["incremental"]["sides"]["source"]["deletions"]


def test_the_range_counts_narrow_to_the_moved_segments(tables: dict[str, Any], tmp_path: Path) -> None:
    """Two rows deleted in two segments: the server counts ranges, far fewer than the segments,
    and only those two segments' keys are compared (not the table's 1,500)."""
    first, inc, d = _deletions_after(tables, tmp_path / "state", "DELETE FROM inc.s WHERE k IN ('k00010', 'k01000')")
    segments = first["merkle"]["segments"]
    assert (d["found"], d["by"], d["segments_compared"]) == (2, "range counts", 2), d
    assert d["first_step"] == "in the changes' snapshot"  # no count(*) of its own
    # ranges of 8 segments, then the two moved ones cut into single segments (k00010 and k01000 are
    # more than 8 segments of 64 rows apart)
    assert d["ranges_counted"] == -(-segments // 8) + 2 * 8 < segments, (segments, d)
    assert inc["source"]["rows"] == 1498


def test_counts_that_do_not_add_up_fall_back_to_reading_every_key(tables: dict[str, Any], tmp_path: Path) -> None:
    """A row inserted behind the watermark (its updated_at in the past: no run lists it) moves a
    segment's count the other way: the moved segments hold two deleted keys where the total says
    one. The run does not take the counts' answer; it reads every key (and the full check reports
    the unlisted row as drift)."""
    state = tmp_path / "state"
    # the insert is in neither deleted row's range of 8 segments (one there would cancel its count:
    # see _find_deleted)
    _, _, d = _deletions_after(tables, state, "DELETE FROM inc.s WHERE k IN ('k00010', 'k01000')",
                               "INSERT INTO inc.s (k, v, n, updated_at) VALUES ('k01200x', 1, 1, now() - interval '2 hours')")
    assert (d["found"], d["by"]) == (2, "key read, every segment"), d
    check = _run_req(_opts(tables, state, verify_full=True), load(None))
    assert check["status"] == "state_drift"


def test_a_key_no_index_serves_is_read_to_find_deletions(tables: dict[str, Any], tmp_path: Path) -> None:
    """Counting rows per key range is exact and cheap only through an index on the key: without
    one (here: copies of the tables without a primary key) the run reads the side's keys instead,
    and the state still equals a full read."""
    with _conn(tables["pg"]) as c:
        for t in ("s", "t"):
            c.execute(f"CREATE TABLE inc.{t}2 AS SELECT * FROM inc.{t}")  # noqa: S608
    dsn = tables["pg"].info.dsn
    bare = {**tables, "source": f"{dsn}#inc.s2", "target": f"{dsn}#inc.t2"}
    state = tmp_path / "state"
    _, _, d = _deletions_after(bare, state, "DELETE FROM inc.s2 WHERE k IN ('k00010', 'k01000')",
                               "UPDATE inc.t2 SET v = v + 1, updated_at = now() WHERE k = 'k00020'")
    assert (d["found"], d["by"]) == (2, "key read"), d
    full = _run_req(_opts(bare, state, verify_full=True), load(None))
    assert full["incremental"]["full_check"]["equal"]


def test_a_key_not_stored_in_nfc_turns_the_range_counts_off(tables: dict[str, Any], tmp_path: Path) -> None:
    """The server orders stored text; a key stored decomposed sorts elsewhere than its canonical
    (NFC) form, so once a changed row brings one, deletions are found by reading the keys."""
    state = tmp_path / "state"
    _, inc, d = _deletions_after(tables, state, "DELETE FROM inc.s WHERE k = 'k00010'",
                                 "INSERT INTO inc.s (k, v, n) VALUES ('k00500e\u0301', 1, 1)")
    assert d["found"] == 1 and d["by"].startswith("key read"), d
    with _conn(tables["pg"]) as c:
        c.execute("DELETE FROM inc.s WHERE k = 'k00020'")
    again = _run_req(_opts(tables, state), load(None))["incremental"]["sides"]["source"]["deletions"]
    assert again["found"] == 1 and again["by"].startswith("key read"), again  # remembered in the state
    check = _run_req(_opts(tables, state, verify_full=True), load(None))
    assert check["incremental"]["full_check"]["equal"]


def test_an_empty_side_then_rows_runs_incrementally(tables: dict[str, Any], tmp_path: Path) -> None:
    """A side empty at the full run (a warehouse table still being filled): its packs hold no
    record batch, and the next runs read and extend them."""
    with _conn(tables["pg"]) as c:
        c.execute("DELETE FROM inc.t")
    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    for step in range(2):
        with _conn(tables["pg"]) as c:
            c.execute("INSERT INTO inc.t (k, v, n) SELECT k, v, n FROM inc.s WHERE k LIKE %s", (f"k00{step}%",))
            (rows,) = c.execute("SELECT count(*) FROM inc.t").fetchone()  # type: ignore[misc]
        inc = _run_req(_opts(tables, state), load(None))
        assert inc["incremental"]["mode"] == "incremental" and inc["target"]["rows"] == rows > 0
    check = _run_req(_opts(tables, state, verify_full=True), load(None))
    assert check["incremental"]["full_check"]["equal"]


def test_a_pack_whose_offsets_point_outside_its_data_is_refused(tables: dict[str, Any], tmp_path: Path) -> None:
    """Packs are memory-mapped: a value offset changed to point past the data must be refused before
    a gather follows it (it would read out of bounds), with the same one-line fix."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00002'")
    pack = sorted((state / "segments" / "source").iterdir())[0]
    t = ipc.open_file(pa.BufferReader(pack.read_bytes())).read_all().combine_chunks()
    i = t.schema.get_field_index("__key")
    col = t.column(i).chunk(0)
    _, off, data = col.buffers()
    offsets = bytearray(off.to_pybytes())
    offsets[8:16] = (10**9).to_bytes(8, "little")  # the second key's end (and the third's start)
    bad = pa.Array.from_buffers(col.type, len(col), [None, pa.py_buffer(bytes(offsets)), data])
    t = t.set_column(i, "__key", bad)
    with pa.OSFile(str(pack), "wb") as out, ipc.new_file(out, t.schema) as w:
        w.write_table(t)
    # in a child process: an out-of-bounds read would kill it (SIGSEGV/SIGBUS), not raise
    child = (
        "import sys\n"
        "from tests.integration.test_incremental import _opts, _run_req\n"
        "from engine.config import load\n"
        "from engine.core.errors import VerificationError\n"
        "try:\n"
        f"    _run_req(_opts({{'source': {tables['source']!r}, 'target': {tables['target']!r}}}, "
        f"__import__('pathlib').Path({str(state)!r})), load(None))\n"
        "except VerificationError as exc:\n"
        "    print(exc); sys.exit(4)\n"
    )
    import os
    import subprocess
    import sys

    got = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2], env={**os.environ})
    assert got.returncode == 4, (got.returncode, got.stderr[-2000:])
    assert "does not match the state's index" in got.stdout


def test_a_transaction_committing_after_the_watermark_is_not_lost(tables: dict[str, Any], tmp_path: Path) -> None:
    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    with _conn(tables["pg"]) as c, _conn(tables["pg"]) as late:
        late.autocommit = False
        late.execute("UPDATE inc.t SET v = v + 100 WHERE k = 'k00010'")  # updated_at: this transaction's start
        pid = late.info.backend_pid
        # the condition the rule is about: the open transaction began longer ago than the overlap
        # (1 s), so only the recorded xact_start can bring the next run's bound back to it
        deadline = time.monotonic() + 30
        while c.execute("SELECT clock_timestamp() - xact_start > interval '2.5 seconds' FROM pg_stat_activity "
                        "WHERE pid = %s", (pid,)).fetchone()[0] is not True:  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        c.execute("UPDATE inc.t SET v = v + 1 WHERE k = 'k00020'")
        mid = _run_req(_opts(tables, state), load(None))  # the late transaction is still open
        assert mid["incremental"]["watermarks"]["target"]["oldest_open_xact"] is not None
        late.commit()
    after = _run_req(_opts(tables, state), load(None))
    keys = set(after["_differences"].filter(after["_differences"]["column"] == "v")["key"].to_list())
    assert {"k00010", "k00020"} <= keys
    check = _run_req(_opts(tables, state, verify_full=True), load(None))
    assert check["incremental"]["full_check"]["equal"]


def test_every_file_the_index_names_is_durable_before_the_index_is_replaced(
        tables: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index is the commit and the previous state's packs go after it: a pack the new index
    names that was still only in the page cache would be lost by a power cut. Each file (packs,
    differences) and each directory holding them must have been fsynced before ``state.json`` is
    replaced, in a full run, an incremental run and a run that compacts."""
    import os

    import engine.workspace as ws

    synced: list[str] = []
    commits: list[tuple[int, dict[str, Any]]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "state.json":
            import json

            commits.append((len(synced), json.loads(Path(src).read_text())))
        real_replace(src, dst)

    monkeypatch.setattr(ws.os, "fsync", fsync)
    monkeypatch.setattr(ws.os, "replace", replace)
    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    runs: list[dict[str, Any]] = []
    rng = random.Random(7)
    with _conn(tables["pg"]) as c:
        for step in range(12):  # until a run compacts (runs write only changed rows: packs empty slowly)
            _mutate(c, rng, step)
            time.sleep(1.2)  # past the read overlap
            runs.append(_run_req(_opts(tables, state), load(None)))
            if runs[-1]["incremental"].get("compacted") and step >= 2:
                break
    assert len(commits) == 1 + len(runs)
    assert any(r["incremental"].get("compacted") for r in runs), "no run compacted: the case is not covered"
    for before, index in commits:
        done = set(synced[:before])
        named = [f for side in ("source", "target") for f in index["sides"][side]["segments"]["files"]]
        named.append(index["differences"]["file"])
        for f in named:
            p = os.path.realpath(state / f)
            assert p in done, f"{f} was not fsynced before the index that names it"
            assert os.path.dirname(p) in done, f"{os.path.dirname(f)} was not fsynced before the index"


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    for k in head:
        doc = doc[int(k)] if isinstance(doc, list) else doc[k]
    if isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


# each: a change an attacker or a broken disk makes to state.json, and the field the refusal names;
# found by an attacker's pass over the index (before: a traceback, exit 70, or a run that went on)
_BAD_INDEX = [
    ("boundaries.0", 12345, "boundaries"),
    ("boundaries.1", None, "boundaries"),
    ("boundaries.2", "k00001", "not strictly increasing"),
    ("generation", "abc", "generation"),
    ("generation", 0, "generation"),
    ("runs_since_full", [1], "runs_since_full"),
    ("totals.mismatched", 10**6, "totals do not add up"),
    ("totals.unchanged", "many", "unchanged"),
    ("totals.columns.v", [0, "NaN", "0.00", "1.00"], "columns"),
    ("totals.columns.v", [0, "1E999999", "0.00", "1.00"], "columns"),
    ("totals.columns.v", [0], "columns"),
    ("totals.columns.zzz", [0, None, None, None], "the mapping compares"),
    ("sides.source.segments.digests", "zz" * 32 * 24, "digests"),
    ("sides.source.segments.files.0", 7, "files"),
    ("sides.source.segments.files.0", "segments/source/000001-00\u0000.arrow", "files"),
    ("sides.source.segments.rows.0", 2**70, "rows"),
    ("sides.source.segments.rows.0", -1, "rows"),
    ("sides.source.segments.file.0", True, "file"),
    ("sides.source.segments.parts.0", 0, "parts"),
    ("sides.source.segments.parts.0", 2, "parts, its segments name 25"),
    ("sides.target.segments.files.0", "segments/target/000009-000000.arrow", "generation 9"),
    ("differences", None, "differences"),
]


@pytest.mark.parametrize(("path", "value", "named"), _BAD_INDEX, ids=[f"{p}={v!r:.20}" for p, v, _ in _BAD_INDEX])
def test_a_malformed_index_is_one_line_exit_4_naming_the_field(tables: dict[str, Any], tmp_path: Path, path: str,
                                                                value: Any, named: str) -> None:
    import json

    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00002'")
    index = json.loads((state / "state.json").read_text())
    _set(index, path, value)
    (state / "state.json").write_text(json.dumps(index))
    with pytest.raises(VerificationError, match="malformed") as exc:
        _run_req(_opts(tables, state), load(None))
    assert named in str(exc.value) and "\n" not in str(exc.value) and "--full" in str(exc.value)
    rebuilt = _run_req(_opts(tables, state, full=True), load(None))  # the fix it names works
    assert rebuilt["incremental"]["reason"] == "--full"
    assert _run_req(_opts(tables, state), load(None))["incremental"]["mode"] == "incremental"


def test_an_index_json_cannot_hold_nan_or_nest_past_the_parser(tables: dict[str, Any], tmp_path: Path) -> None:
    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    text = (state / "state.json").read_text()
    for bad in (text.replace('"runs": 1', '"runs": NaN'), "[" * 200_000 + "]" * 200_000):
        (state / "state.json").write_text(bad)
        with pytest.raises(UsageError, match="is not valid JSON"):
            _run_req(_opts(tables, state), load(None))
    assert _run_req(_opts(tables, state, full=True), load(None))["incremental"]["reason"] == "--full"


def _rewrite_pack(pack: Path, change: Any) -> None:
    """Rewrite a pack as a valid Arrow file with ``change(table)`` applied (what an attacker who
    knows the format does)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    t = ipc.open_file(pa.BufferReader(pack.read_bytes())).read_all().combine_chunks()
    t = change(t)
    with pa.OSFile(str(pack), "wb") as out, ipc.new_file(out, t.schema) as w:
        w.write_table(t)


def _first_pack(state: Path, side: str = "source") -> Path:
    return sorted((state / "segments" / side).iterdir())[0]


def test_packs_changed_in_ways_their_digests_do_not_cover_are_refused(tables: dict[str, Any], tmp_path: Path) -> None:
    """The digests cover the canonical bytes of the mapped columns. Found by an attacker's pass,
    each of these went through before: ``__key`` (the text every search uses) changed while the
    key column was not (negative missing counts), an int column recast as float (same bytes,
    ``10.0`` in the output), a dictionary-encoded key (a Polars panic, exit 1)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def key_text(t: pa.Table) -> pa.Table:
        k = t.column("__key").to_pylist()
        k[1] = k[1] + "x"
        return t.set_column(t.schema.get_field_index("__key"), "__key", pa.array(k, type=t.schema.field("__key").type))

    cases = [
        (key_text, "stored key text is not the one its key columns give"),
        (lambda t: t.set_column(t.schema.get_field_index("n"), "n", pc.cast(t.column("n"), pa.float64())),
         "its column n is double, stored as int64"),
        (lambda t: t.set_column(t.schema.get_field_index("__key"), "__key", pc.dictionary_encode(t.column("__key"))),
         "its column __key is dictionary"),
        (lambda t: t.drop_columns(["n"]), "its columns"),
    ]
    for change, message in cases:
        state = tmp_path / f"state{len(message)}"
        _run_req(_opts(tables, state), load(None))
        with _conn(tables["pg"]) as c:
            c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00002'")
        _rewrite_pack(_first_pack(state), change)
        with pytest.raises(VerificationError, match=message):
            _run_req(_opts(tables, state), load(None))


def test_index_entries_moved_or_grown_are_refused(tables: dict[str, Any], tmp_path: Path) -> None:
    """Each entry still passes its own digest: two segments' entries swapped (their rows would be
    spliced as the other's), or one segment's rows raised by one with the totals to match (the
    deletion search read its neighbour's first key as its own and reported a live row deleted)."""
    import json

    for case in ("swap", "grow"):
        state = tmp_path / case
        _run_req(_opts(tables, state), load(None))
        index = json.loads((state / "state.json").read_text())
        seg = index["sides"]["source"]["segments"]
        if case == "swap":
            for col in ("file", "offset", "rows"):
                seg[col][0], seg[col][1] = seg[col][1], seg[col][0]
            d = seg["digests"]
            seg["digests"] = d[64:128] + d[:64] + d[128:]
            message = "not of its key range"
        else:
            seg["rows"][3] += 1
            index["totals"]["source_rows"] += 1
            message = "do not fit their packs"
        (state / "state.json").write_text(json.dumps(index))
        with _conn(tables["pg"]) as c:
            c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00002'")
        with pytest.raises(VerificationError, match=message):
            _run_req(_opts(tables, state), load(None))


@pytest.mark.timeout(60)  # before the fix the run blocked on the open for good
def test_a_pack_that_is_a_fifo_is_refused_not_waited_on(tables: dict[str, Any], tmp_path: Path) -> None:
    import os

    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    pack = _first_pack(state)
    pack.unlink()
    os.mkfifo(pack)
    with pytest.raises(VerificationError, match="not a regular file"):
        _run_req(_opts(tables, state), load(None))


def test_a_link_planted_at_the_next_runs_names_is_not_written_through(tables: dict[str, Any], tmp_path: Path) -> None:
    """A run writes under the next generation's names; links planted there (a pack's, the
    differences', the index's temporary) used to have the run write through them, over a file
    outside the state. Now the link is replaced, the outside file is untouched, the run is right."""
    import os

    state = tmp_path / "state"
    first = _run_req(_opts(tables, state), load(None))
    victims = []
    for name in ("segments/source/000002-000000.arrow", "segments/target/000002-000000.arrow",
                 "differences/000002.parquet", "state.json.tmp"):
        v = tmp_path / f"victim-{len(victims)}.txt"
        v.write_text("keep me")
        os.symlink(v, state / name)
        victims.append(v)
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00002'")
        c.execute("UPDATE inc.t SET v = v + 1 WHERE k = 'k00003'")
    after = _run_req(_opts(tables, state), load(None))
    assert after["incremental"]["mode"] == "incremental"
    assert all(v.read_text() == "keep me" for v in victims)
    assert after["mismatched"] != first["mismatched"] or after["merkle"] != first["merkle"]
    check = _run_req(_opts(tables, state, verify_full=True), load(None))
    assert check["incremental"]["full_check"]["equal"]


def test_a_lock_that_cannot_be_one_is_a_one_line_usage_error(tables: dict[str, Any], tmp_path: Path) -> None:
    import os

    for kind in ("dir", "fifo", "link"):
        state = tmp_path / kind
        state.mkdir()
        outside = tmp_path / f"outside-{kind}"
        lock = state / "lock"
        if kind == "dir":
            lock.mkdir()
        elif kind == "fifo":
            os.mkfifo(lock)
        else:
            os.symlink(outside, lock)
        with pytest.raises(UsageError, match="lock"):
            _run_req(_opts(tables, state), load(None))
        assert not outside.exists()


def test_a_changed_total_is_state_drift_at_the_full_check(tables: dict[str, Any], tmp_path: Path) -> None:
    """A variance total has no digest and no second copy in the state; changed to another valid
    number it is carried forward, until the full check, which compares totals as well as roots
    (before: the check compared roots only, said ``ok`` and silently put the right totals back)."""
    import json

    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    index = json.loads((state / "state.json").read_text())
    index["totals"]["columns"]["v"][1] = "123456.78"
    (state / "state.json").write_text(json.dumps(index))
    check = _run_req(_opts(tables, state, verify_full=True), load(None))
    fc = check["incremental"]["full_check"]
    assert check["status"] == "state_drift" and fc["roots_equal"] and not fc["totals_equal"], fc
    assert check["columns"]["v"]["abs_variance"] != "123456.78"


def test_a_tampered_segment_file_is_refused_and_full_rebuilds(tables: dict[str, Any], tmp_path: Path) -> None:
    """A careful attacker keeps the pack a valid Arrow file and changes one stored value of a
    segment the next run touches: its rows no longer hash to the index's digest. A garbled pack is
    refused too. Both name the fix, and ``--full`` rebuilds."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00002'")
    pack = sorted((state / "segments" / "source").iterdir())[0]
    t = ipc.open_file(pa.BufferReader(pack.read_bytes())).read_all()  # in memory: the file is rewritten below
    n = t.column("n").to_pylist()
    n[0] = n[0] + 1  # k00001's row, in the segment k00002 is in
    t = t.set_column(t.schema.get_field_index("n"), "n", pa.array(n, type=t.schema.field("n").type))
    with pa.OSFile(str(pack), "wb") as out, ipc.new_file(out, t.schema) as w:
        w.write_table(t)
    with pytest.raises(VerificationError, match="does not match the state's index"):
        _run_req(_opts(tables, state), load(None))
    pack.write_bytes(b"not an arrow file")
    with pytest.raises(VerificationError, match="does not match the state's index"):
        _run_req(_opts(tables, state), load(None))
    rebuilt = _run_req(_opts(tables, state, full=True), load(None))
    assert rebuilt["incremental"]["mode"] == "full" and rebuilt["incremental"]["reason"] == "--full"


def test_a_tampered_pack_is_refused_under_its_own_name_before_compaction_moves_it(
        tables: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compaction copies a mostly unused pack's rows before the commit removes it. A row changed
    in that pack, in a segment no run touches, must stop the run with the pack's own name: copied
    unchecked, the evidence (which file was changed) would be removed with the pack."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from engine.app import incremental

    monkeypatch.setattr(incremental, "COMPACT_BELOW", 1.01)  # every older pack is compacted
    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    (pack,) = sorted((state / "segments" / "source").iterdir())
    t = ipc.open_file(pa.BufferReader(pack.read_bytes())).read_all()
    n = t.column("n").to_pylist()
    n[-1] = n[-1] + 1  # the last key's row: far from the one changed below
    t = t.set_column(t.schema.get_field_index("n"), "n", pa.array(n, type=t.schema.field("n").type))
    with pa.OSFile(str(pack), "wb") as out, ipc.new_file(out, t.schema) as w:
        w.write_table(t)
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00002'")
    with pytest.raises(VerificationError, match=f"{pack.name} does not match the state's index"):
        _run_req(_opts(tables, state), load(None))
    assert pack.is_file()  # not removed: the state still names it


def test_two_runs_on_one_state_and_bad_options(tables: dict[str, Any], tmp_path: Path) -> None:
    from engine.workspace import StateDirectory

    state = tmp_path / "state"
    held = StateDirectory(state).lock()
    try:
        with pytest.raises(UsageError, match="in use by another run"):
            _run_req(_opts(tables, state), load(None))
    finally:
        held.close()
    with pytest.raises(UsageError, match="exclude each other"):
        _opts(tables, state, full=True, verify_full=True).check()
    with pytest.raises(UsageError, match="--full-every"):
        _opts(tables, state, full_every=0).check()


def test_cli_state_run_is_signed_with_its_watermarks_and_verifies(tables: dict[str, Any], tmp_path: Path) -> None:
    """From the command line with a mapping's ``state``: the second run is incremental, its JSON and
    the signed manifest carry the mode, the watermarks and the digest of the state it started from,
    and `manifest verify --data` recomputes both roots from the state's segments."""
    import base64
    import json
    import os

    from tests.stack_fixtures import recon

    pg = tables["pg"]
    env = {**os.environ, "PGPASSFILE": str(pg.paths.pgpass_file)}
    cfg = tmp_path / "recon.toml"
    cfg.write_text(f'[mapping.inc]\nsource = "{tables["source"]}"\ntarget = "{tables["target"]}"\nkey = ["k"]\n'
                   'columns = ["v", "n"]\nsource_updated_at = "updated_at"\ntarget_updated_at = "updated_at"\n'
                   'state = "inc-state"\n')
    assert recon("keygen", "--out", str(tmp_path / "keys"), env=env).returncode == 0
    first = recon("diff", "-C", str(cfg), "--mapping", "inc", "--json", env=env)
    assert first.returncode == 1, first.stderr
    assert json.loads(first.stdout)["incremental"]["mode"] == "full"
    with _conn(pg) as c:
        c.execute("UPDATE inc.s SET v = v + 3 WHERE k = 'k00005'")
    out = tmp_path / "out"
    r = recon("diff", "-C", str(cfg), "--mapping", "inc", "--out", str(out), "--manifest", str(out / "manifest.json"),
              "--signing-key", str(tmp_path / "keys" / "recon.key"), "--json", env=env)
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout)
    assert s["incremental"]["mode"] == "incremental" and s["status"] == "ok"
    assert s["incremental"]["state_before"] == json.loads(first.stdout)["incremental"]["state_after"]
    statement = json.loads(base64.b64decode(json.loads((out / "manifest.json").read_text())["payload"]))
    signed = statement["predicate"]["results"]["incremental"]
    assert signed["watermarks"] == s["incremental"]["watermarks"] and signed["state_before"] == s["incremental"]["state_before"]
    v = recon("manifest", "verify", str(out / "manifest.json"), "--key", str(tmp_path / "keys" / "recon.pub"),
              "--data", str(out), "--json", env=env)
    assert v.returncode == 0, v.stdout + v.stderr
    assert (tmp_path / "inc-state" / "state.json").is_file()  # relative to the config file
    for bad, what in ((["--full-every", "0"], "--full-every"), (["--full", "--verify-full"], "exclude each other")):
        b = recon("diff", "-C", str(cfg), "--mapping", "inc", *bad, env=env)
        assert b.returncode == 2 and what in b.stderr and len(b.stderr.strip().splitlines()) == 1, b.stderr


def test_a_run_with_nothing_changed_touches_no_segment(tables: dict[str, Any], tmp_path: Path) -> None:
    """A cron run when nothing changed (the commonest run of all) stayed incremental and touched no
    segment; it used to fail with an internal error (no touched segment to count rows in)."""
    state = tmp_path / "state"
    first = _run_req(_opts(tables, state), load(None))
    again = _run_req(_opts(tables, state), load(None))
    assert again["incremental"]["mode"] == "incremental" and again["status"] == "ok"
    assert again["incremental"]["touched_segments"] == 0
    assert again["incremental"]["sides"]["source"]["rows_reread"] == 0
    _same(again, first)


def test_a_change_the_watermark_cannot_see_is_state_drift_and_the_state_is_rebuilt(tables: dict[str, Any],
                                                                                 tmp_path: Path) -> None:
    """A write that breaks the rule (the trigger disabled, an old updated_at) is invisible to an
    incremental run; the full check finds different roots, reports ``state_drift`` with the full
    read's results, and rebuilds the state, which the next check finds whole."""
    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    with _conn(tables["pg"]) as c:
        c.execute("ALTER TABLE inc.t DISABLE TRIGGER touch")
        c.execute("UPDATE inc.t SET v = v + 5, updated_at = now() - interval '2 hours' WHERE k = 'k00030'")
        c.execute("ALTER TABLE inc.t ENABLE TRIGGER touch")
    blind = _run_req(_opts(tables, state), load(None))
    assert "k00030" not in set(blind["_differences"]["key"].to_list())  # the incremental run cannot see it
    drift = _run_req(_opts(tables, state, verify_full=True), load(None))
    assert drift["status"] == "state_drift" and not drift["incremental"]["full_check"]["equal"]
    assert "k00030" in set(drift["_differences"]["key"].to_list())  # the full read's results are reported
    again = _run_req(_opts(tables, state, verify_full=True), load(None))
    assert again["status"] == "ok" and again["incremental"]["full_check"]["equal"]
    assert again["incremental"]["runs_since_full"] == 0


def test_full_every_n_runs_checks_the_state(tables: dict[str, Any], tmp_path: Path) -> None:
    state = tmp_path / "state"
    _run_req(_opts(tables, state, full_every=2), load(None))
    one = _run_req(_opts(tables, state, full_every=2), load(None))
    assert "full_check" not in one["incremental"] and one["incremental"]["runs_since_full"] == 1
    two = _run_req(_opts(tables, state, full_every=2), load(None))
    assert two["incremental"]["full_check"]["why"] == "every 2 runs (--full-every)"
    assert two["incremental"]["full_check"]["equal"] and two["incremental"]["runs_since_full"] == 0


def test_a_decimal_that_outgrows_64_bits_keeps_the_state_equal_to_a_full_read(tables: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    """A value past int64's range (as scaled cents) turns a decimal column from its scaled form into
    the wide one in the changed rows only: the touched segments mix both forms, and the run must
    still hash, merge and diff them as one full read of both sides does."""
    with _conn(tables["pg"]) as c:
        for t in ("s", "t"):
            c.execute(f"ALTER TABLE inc.{t} ALTER COLUMN v TYPE numeric(38,2)")  # noqa: S608
    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = 123456789012345678901.25 WHERE k IN ('k00010', 'k01200')")
        c.execute("UPDATE inc.t SET v = 123456789012345678901.25 WHERE k = 'k00010'")
        c.execute("DELETE FROM inc.t WHERE k = 'k00500'")
    check = tmp_path / "check"
    shutil.copytree(state, check)
    inc = _run_req(_opts(tables, state), load(None))
    assert inc["incremental"]["mode"] == "incremental", inc["incremental"]
    full = _run_req(_opts(tables, check, verify_full=True), load(None))
    assert full["incremental"]["full_check"]["equal"], full["incremental"]["full_check"]
    _same(inc, full)
    wide = inc["_differences"].filter(inc["_differences"]["key"] == "k01200")
    assert wide.height == 1 and wide["kind"][0] == "mismatched"
    # a later run touches a segment of the wide pack and one of a scaled pack in one batch (which
    # cannot stay in Arrow): the stored keys its changes replace are still counted, so the count
    # misses exactly the one row deleted
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET n = n + 1 WHERE k IN ('k00011', 'k00900')")
        c.execute("DELETE FROM inc.s WHERE k = 'k00901'")
    again = _run_req(_opts(tables, state), load(None))
    assert again["incremental"]["mode"] == "incremental", again["incremental"]
    d = again["incremental"]["sides"]["source"]["deletions"]
    assert (d["predicted"] - d["counted"], d["found"]) == (1, 1), d


def test_a_malformed_segment_list_in_the_index_is_refused(tables: dict[str, Any], tmp_path: Path) -> None:
    """The index's segment columns are input too: columns of different lengths, or a pack named
    outside the state directory, are one-line refusals (exit 4), never a crash or a read elsewhere."""
    import json

    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    index = json.loads((state / "state.json").read_text())
    good = json.dumps(index)
    index["sides"]["source"]["segments"]["rows"].pop()
    (state / "state.json").write_text(json.dumps(index))
    with pytest.raises(VerificationError, match="index is malformed .the source side lists 23 parts, its segments name 24"):
        _run_req(_opts(tables, state), load(None))
    index = json.loads(good)
    index["sides"]["source"]["segments"]["files"][0] = "../../etc/passwd"
    (state / "state.json").write_text(json.dumps(index))
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00002'")
    with pytest.raises(VerificationError, match=r"index is malformed .* at `\$\.sides\.source\.segments\.files\[0\]`"):
        _run_req(_opts(tables, state), load(None))


def test_an_incremental_run_writes_only_the_rows_that_changed(tables: dict[str, Any], tmp_path: Path) -> None:
    """Two rows updated on the source, one inserted on the target: the run's new packs hold those
    three rows and nothing else (the touched segments' other rows stay where they lie, named by
    parts), the packs written before are left byte for byte, and a full read agrees. Before parts,
    a run rewrote each touched segment whole (64 rows here, about 180 times the changed rows at 10M)."""
    import pyarrow as pa

    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))
    before = {p: p.read_bytes() for p in (state / "segments").rglob("*.arrow")}
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = v + 1 WHERE k IN ('k00100', 'k01234')")
        c.execute("INSERT INTO inc.t (k, v, n) VALUES ('k00100a', 1, 1)")
    inc = _run_req(_opts(tables, state), load(None))
    assert inc["incremental"]["mode"] == "incremental" and inc["incremental"]["touched_segments"] == 2
    new = {p: pa.ipc.open_file(pa.memory_map(str(p))).read_all()
           for p in (state / "segments").rglob("*.arrow") if p not in before}
    assert sorted((p.parent.name, t.num_rows) for p, t in new.items()) == [("source", 2), ("target", 1)]
    assert sorted(k for t in new.values() for k in t.column("__key").to_pylist()) == ["k00100", "k00100a", "k01234"]
    assert all(p.read_bytes() == b for p, b in before.items())
    check = _run_req(_opts(tables, state, verify_full=True), load(None))
    assert check["incremental"]["full_check"]["equal"], check["incremental"]["full_check"]


def test_a_stored_segment_no_run_loads_is_checked_by_the_full_check(tables: dict[str, Any], tmp_path: Path) -> None:
    """A value changed in a pack, in a segment the runs do not touch: the index's digests are intact,
    so the roots a full check compares agree. The full check reads every stored segment too, and
    reports state drift and rebuilds (found by a second reader's pass over segments made of parts)."""
    state = tmp_path / "state"
    _run_req(_opts(tables, state), load(None))

    def bump(t: Any) -> Any:
        import pyarrow as pa

        n = t.column("n").to_pylist()
        n[-1] = n[-1] + 1  # the last key (k01500): far from the row the next run changes
        return t.set_column(t.schema.get_field_index("n"), "n", pa.array(n, type=t.schema.field("n").type))

    _rewrite_pack(sorted((state / "segments" / "source").iterdir())[-1], bump)
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00002'")
    run = _run_req(_opts(tables, state, verify_full=True), load(None))
    fc = run["incremental"]["full_check"]
    assert run["status"] == "state_drift" and fc["roots_equal"] and not fc["stored_segments_check"], fc
    with _conn(tables["pg"]) as c:
        c.execute("UPDATE inc.s SET v = v + 1 WHERE k = 'k00003'")
    again = _run_req(_opts(tables, state, verify_full=True), load(None))  # rebuilt: every segment checks
    assert again["status"] == "ok" and again["incremental"]["full_check"]["stored_segments_check"]
