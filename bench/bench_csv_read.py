"""`csv:PATH` reading: recon's reader against Arrow's own multi-block, multi-threaded read of the
same file in the same run (the floor), and against the reader before issue 22 (16 MiB blocks, no
quoted line ends), which lost data on a quoted CR LF across a block edge.

    python bench/bench_csv_read.py --rows 2000000 --repeat 5

The file has a key, a 2-decimal amount and a text column in which one row in 50 holds a quoted
CR LF (a Salesforce text area). recon reads every column as text (nothing typed by guessing), so
the floor does too. Prints one markdown row per reader: median seconds and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.connectors.files.source import extract  # noqa: E402
from engine.connectors.refs import FileRef  # noqa: E402


def make(path: Path, rows: int) -> None:
    with path.open("w", newline="") as fh:
        fh.write("id,amount,note\n")
        step = 200_000
        for start in range(0, rows, step):
            fh.write("".join(
                f'K{i:09d},{i % 100000}.{i % 100:02d},' + (f'"line {i}\r\nnext"\n' if i % 50 == 0 else f"note {i}\n")
                for i in range(start, min(rows, start + step))))


def _as_text(names: list[str]) -> pacsv.ConvertOptions:
    return pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                quoted_strings_can_be_null=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    names = ["id", "amount", "note"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.csv"
        make(path, args.rows)
        readers = {
            "floor: Arrow, default blocks, threads, newlines_in_values": lambda: pacsv.read_csv(
                path, convert_options=_as_text(names), parse_options=pacsv.ParseOptions(newlines_in_values=True)),
            "before issue 22: 16 MiB blocks, no quoted line ends (unsafe)": lambda: pacsv.read_csv(
                path, convert_options=_as_text(names), read_options=pacsv.ReadOptions(block_size=1 << 24)),
            "recon extract (one block, quote check, to Polars)": lambda: extract(FileRef("csv", str(path))),
        }
        times: dict[str, list[float]] = {k: [] for k in readers}
        for _ in range(args.repeat):  # alternate, so that load drifts hit every reader alike
            for name, fn in readers.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        floor = statistics.median(times[next(iter(readers))])
        size = path.stat().st_size
        print(f"{args.rows:,} rows, {size / 1e6:.0f} MB, median of {args.repeat}\n")
        print("| reader | median s | × floor |\n|---|---|---|")
        for name, ts in times.items():
            print(f"| {name} | {statistics.median(ts):.3f} | {statistics.median(ts) / floor:.2f} |")


if __name__ == "__main__":
    main()
