"""`divergent_ranges` by value through `recon diff --json` (issue 22, item 7): the contract test checks
only its keys. Here the expected ranges are derived from the two files by a few lines of plain Python
that follow README "Merkle segments" (boundaries: every N-th source key in byte order, the first
excluded; segment i holds b[i] <= key < b[i+1]; a segment diverges when its rows differ on either
side), not by recon's functions, and compared whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N = 4  # --segment-rows


def expected_ranges(source: dict[str, str], target: dict[str, str], n: int) -> list[dict]:
    keys = sorted(source, key=str.encode)
    bounds = keys[n::n]
    edges = [None, *bounds, None]
    out = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        def inside(k: str, lo: str | None = lo, hi: str | None = hi) -> bool:
            return (lo is None or k.encode() >= lo.encode()) and (hi is None or k.encode() < hi.encode())
        s = {k: v for k, v in source.items() if inside(k)}
        t = {k: v for k, v in target.items() if inside(k)}
        if s != t:
            out.append({"from": lo, "to": hi, "source_rows": len(s), "target_rows": len(t)})
    return out


def test_divergent_ranges_are_exactly_the_segments_that_differ(tmp_path: Path) -> None:
    source = {f"k{i:02d}": str(i) for i in range(18)}  # boundaries k04, k08, k12, k16: five segments
    target = dict(source)
    target["k05"] = "five"  # a changed value in [k04, k08)
    del target["k13"]  # a row missing from [k12, k16)
    target["k165"] = "new"  # a row only the target has, in [k16, …)
    target["K99"] = "upper"  # "K" sorts before "k" in byte order: a new row in (…, k04)
    want = expected_ranges(source, target, N)
    assert [(r["from"], r["to"]) for r in want] == [(None, "k04"), ("k04", "k08"), ("k12", "k16"), ("k16", None)]
    for name, rows in (("s.csv", source), ("t.csv", target)):
        (tmp_path / name).write_text("Id,v\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "diff", f"csv:{tmp_path / 's.csv'}",
                          f"csv:{tmp_path / 't.csv'}", "-k", "Id", "--segment-rows", str(N), "--json"],
                         capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 1, res.stderr
    d = json.loads(res.stdout)
    assert d["divergent_ranges"] == want
    assert (d["merkle"]["segments"], d["merkle"]["divergent_segments"]) == (5, 4)
    assert sum(r["source_rows"] for r in want) == 14 and sum(r["target_rows"] for r in want) == 15
