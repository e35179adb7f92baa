"""Key-range runs give the one-pass answer: the same summary, roots and (sorted) differences for
every range size, with duplicate keys, keys on range edges, integer keys and an empty source."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.core.plan import KeyRange, plan_ranges, range_rows_for

VOLATILE = {"elapsed_s", "plan", "retries"}


def test_plan_groups_whole_segments_and_covers_every_key() -> None:
    b = ["b", "d", "f", "h"]
    p = plan_ranges(b, [1, 5, 1, 1, 3], range_rows=3)
    # a segment larger than range_rows is a task of its own; no segment is ever split
    assert [(t.first_segment, t.segments) for t in p.tasks] == [(0, 1), (1, 1), (2, 2), (4, 1)]
    assert [t.key_range.as_json() for t in p.tasks] == [
        {"from": None, "to": "b"}, {"from": "b", "to": "d"}, {"from": "d", "to": "h"}, {"from": "h", "to": None}]
    assert [t.boundaries for t in p.tasks] == [(), (), ("f",), ()]
    assert sum(t.segments for t in p.tasks) == p.segments == 5
    assert [t.source_rows for t in p.tasks] == [1, 5, 2, 3]


def test_plan_one_range_holds_everything() -> None:
    p = plan_ranges(["m"], [4, 4], range_rows=100)
    assert len(p.tasks) == 1 and p.tasks[0].key_range.whole and p.tasks[0].boundaries == ("m",)


def test_key_range_is_byte_order_with_open_ends() -> None:
    keys = pl.DataFrame({"__key": ["10", "9", "Z", "a", "é", "a\x00b"]})
    sel = keys.filter(KeyRange("9", "a").expr())["__key"].to_list()
    assert sel == ["9", "Z"]  # "10" < "9" (text order); "a" is the exclusive end
    assert keys.filter(KeyRange(None, "10").expr()).height == 0
    assert keys.filter(KeyRange("a", None).expr())["__key"].to_list() == ["a", "é", "a\x00b"]


def test_range_rows_follow_the_memory_limit() -> None:
    assert range_rows_for(3 * 2**30, workers=1) == 2 * range_rows_for(3 * 2**30, workers=2)
    assert range_rows_for(1, workers=4) == 1024  # never below the floor


def _files(tmp: Path, *, int_key: bool, empty_source: bool = False) -> tuple[str, str]:
    rng = np.random.default_rng(7)
    n = 3000
    keys = rng.integers(-50, 2500, n) if int_key else np.array([f"k{int(x):05d}" for x in rng.integers(0, 2500, n)])
    cents = rng.integers(0, 10**6, n)
    amt = [Decimal(int(c)) / 100 for c in cents]
    src = pl.DataFrame({"id": keys, "amount": pl.Series(amt, dtype=pl.Decimal(18, 2))})  # duplicates included
    tgt = src.with_columns(
        pl.when(pl.int_range(pl.len()) % 11 == 0).then(pl.col("amount") + Decimal("0.01"))
        .otherwise(pl.col("amount")).alias("amount"))
    tgt = tgt.filter(pl.int_range(pl.len()) % 37 != 5)  # missing in target
    extra = pl.DataFrame({"id": [99999, -999] if int_key else ["zzz", "a"],
                          "amount": pl.Series([Decimal("1.00"), Decimal("2.00")], dtype=pl.Decimal(18, 2))})
    tgt = pl.concat([tgt, extra.cast(tgt.schema)])  # missing in source, below and above every boundary
    if empty_source:
        src = src.clear()
    s, t = tmp / "s.parquet", tmp / "t.parquet"
    src.sample(fraction=1.0, shuffle=True, seed=1).write_parquet(s)
    tgt.sample(fraction=1.0, shuffle=True, seed=2).write_parquet(t)
    return f"parquet:{s}", f"parquet:{t}"


def _diff(tmp: Path, s: str, t: str, name: str, range_rows: int | None = None) -> tuple[dict, pl.DataFrame]:
    """In process (the CLI's own use case): the range path's options as `--range-rows` gives them."""
    from engine.app.diff import DiffOptions, run
    from engine.app.scale import ScaleOptions
    from engine.config import load

    out = tmp / name
    res = run(DiffOptions(source=s, target=t, keys=(("id", "id"),), segment_rows=50, out_dir=out,
                          scale=ScaleOptions(range_rows=range_rows)), load(None))
    assert int(res.exit_code) == 1
    summary = json.loads(json.dumps(res.summary, default=str))
    d = pl.read_parquet(out / "differences.parquet")
    return summary, d.sort(d.columns)


def _comparable(s: dict) -> dict:
    out = {k: v for k, v in s.items() if k not in VOLATILE}
    for side in ("source", "target"):
        out[side] = {k: v for k, v in s[side].items() if k != "extract"}
    return out


@pytest.mark.parametrize("int_key", [False, True], ids=["text-key", "int-key"])
def test_every_range_size_gives_the_one_pass_answer(tmp_path: Path, int_key: bool) -> None:
    s, t = _files(tmp_path, int_key=int_key)
    one, d_one = _diff(tmp_path, s, t, "one")
    assert "plan" not in one  # small: the one-pass path
    assert one["duplicate_keys"]["source"] > 0 and one["missing_in_source"] >= 2 and one["mismatched"] > 0
    for rows in ("1", "120", "777"):
        got, d = _diff(tmp_path, s, t, f"r{rows}", int(rows))
        assert got["plan"]["ranges"] > 1 and got["plan"]["range_rows"] == int(rows)
        assert _comparable(got) == _comparable(one), rows
        assert d.equals(d_one), rows


def test_an_empty_source_side(tmp_path: Path) -> None:
    s, t = _files(tmp_path, int_key=False, empty_source=True)
    one, d_one = _diff(tmp_path, s, t, "one")
    got, d = _diff(tmp_path, s, t, "r", 10)
    assert got["plan"]["ranges"] == 1 and one["missing_in_source"] == got["missing_in_source"] > 0
    assert _comparable(got) == _comparable(one) and d.equals(d_one)


def test_a_parquet_key_not_in_nfc_is_never_lost(tmp_path: Path) -> None:
    """A sorted Parquet file whose text key holds a decomposed value: its row group's statistics
    would place it by its stored spelling, so pruning is off for that file and the range run equals
    one pass (before the guard the range run lost the row)."""
    keys = sorted([f"k{i:04d}" for i in range(600)] + ["e\u0301x", "f", "z"])
    src = pl.DataFrame({"id": keys, "v": list(range(len(keys)))})
    tgt = src.with_columns(pl.when(pl.col("id") == "z").then(pl.col("v") + 1).otherwise(pl.col("v")).alias("v"))
    s, t = tmp_path / "s.parquet", tmp_path / "t.parquet"
    src.write_parquet(s, row_group_size=50)
    tgt.write_parquet(t, row_group_size=50)
    one, d_one = _diff(tmp_path, f"parquet:{s}", f"parquet:{t}", "one")
    got, d = _diff(tmp_path, f"parquet:{s}", f"parquet:{t}", "r", 100)
    assert one["source"]["rows"] == 603 and one["mismatched"] == 1 and one["missing_in_target"] == 0
    assert got["plan"]["ranges"] > 3
    assert _comparable(got) == _comparable(one) and d.equals(d_one)


@pytest.mark.parametrize("text, expected", [("3G", 3 * 2**30), ("512m", 512 * 2**20), ("2GiB", 2 * 2**30),
                                            ("1500000000", 1_500_000_000), (" 64K ", 64 * 2**10)])
def test_memory_limit_sizes(text: str, expected: int) -> None:
    from engine.app.scale import parse_size

    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["0", "3X", "-1G", "1.5G", "", "3G;", "1e9", "G", "3 GG", "９G"])
def test_a_hostile_memory_limit_is_one_usage_error(text: str) -> None:
    from engine.app.scale import parse_size
    from engine.core.errors import UsageError

    with pytest.raises(UsageError) as err:
        parse_size(text)
    assert err.value.exit_code == 2 and "--memory-limit" in str(err.value) and "e.g. 3G" in str(err.value)


def test_bad_scale_options_exit_2_on_one_line_before_any_read(tmp_path: Path) -> None:
    import subprocess
    import sys

    for extra, needle in ((["--memory-limit", "3X"], "--memory-limit"), (["--progress", "bar"], "--progress"),
                          (["--executor", "spark"], "--executor"), (["--range-rows", "0"], "--range-rows")):
        r = subprocess.run([sys.executable, "-m", "engine.cli.main", "diff", f"parquet:{tmp_path}/none.parquet",
                            f"parquet:{tmp_path}/none2.parquet", "-k", "id", *extra], capture_output=True, text=True)
        assert r.returncode == 2, (extra, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, (extra, r.stderr)
