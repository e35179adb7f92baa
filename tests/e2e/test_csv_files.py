"""`csv:PATH` files as they come, through `recon diff` (issue 22, item 5): a file written the way
Bulk API 2.0 writes it (every value quoted, LF) and the same records saved by a spreadsheet (a
byte-order mark, CR LF, quotes only where needed) are the same records; a header-only file is a
snapshot of no rows; a file recon cannot read exactly is exit 2 with one line naming it, never a
traceback and never a silently shorter table (each bad input's message is a unit case in
tests/unit/test_csv_source.py). The expected counts are written out by hand from the
files below. No service is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: (Id, Name, Note) as Salesforce holds them; None is an empty field (NULL)
RECORDS = [
    ("007", "Acme, Inc.", 'said "hi"\nthen left'),
    ("001B", "Globex", None),
    ("001C", "Initech", "line one\nline two\nline three"),
    ("001D", "", ""),  # an empty text is NULL in a Bulk CSV, quoted or not
]


def bulk_csv(records: list[tuple[str | None, ...]]) -> bytes:
    """As Bulk API 2.0 writes a result: a header, every value quoted, LF line ends."""
    def q(v: str | None) -> str:
        return '""' if v is None else '"' + v.replace('"', '""') + '"'
    lines = ["Id,Name,Note"] + [",".join(q(v) for v in r) for r in records]
    return ("\n".join(lines) + "\n").encode()


def spreadsheet_csv(records: list[tuple[str | None, ...]]) -> bytes:
    """As a spreadsheet saves "CSV UTF-8": a byte-order mark, CR LF between rows (a line end inside a
    value stays LF), quotes only around values with a comma, quote or line end, nothing for NULL."""
    def q(v: str | None) -> str:
        if not v:
            return ""
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n') else v
    lines = ["Id,Name,Note"] + [",".join(q(v) for v in r) for r in records]
    return b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode()


def recon(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def diff(s: Path, t: Path, code: int) -> dict:
    res = recon("diff", f"csv:{s}", f"csv:{t}", "-k", "Id", "--json")
    assert res.returncode == code, (res.returncode, res.stderr)
    return json.loads(res.stdout)


def counts(d: dict) -> tuple[int, ...]:
    return (d["source"]["rows"], d["target"]["rows"], d["missing_in_target"], d["missing_in_source"],
            d["mismatched"], d["unchanged"])


def test_bulk_and_spreadsheet_files_of_the_same_records_agree(tmp_path: Path) -> None:
    s, t = tmp_path / "bulk.csv", tmp_path / "sheet.csv"
    s.write_bytes(bulk_csv(RECORDS))
    t.write_bytes(spreadsheet_csv(RECORDS))
    assert t.read_bytes().startswith(b"\xef\xbb\xbfId,") and b"\r\n001B,Globex,\r\n" in t.read_bytes()
    d = diff(s, t, 0)
    assert counts(d) == (4, 4, 0, 0, 0, 4)
    assert d["compared_columns"] == {"Name": "text", "Note": "text"}  # the BOM is not part of "Id"
    # one character after a quoted line end differs: exactly that record, in exactly that column
    t.write_bytes(spreadsheet_csv([RECORDS[0], RECORDS[1], ("001C", "Initech", "line one\nline two\nline 3"),
                                   RECORDS[3]]))
    d = diff(s, t, 1)
    assert counts(d) == (4, 4, 0, 0, 1, 3)
    assert {n: c["mismatched"] for n, c in d["columns"].items()} == {"Name": 0, "Note": 1}


def test_a_header_only_file_is_a_snapshot_of_no_rows(tmp_path: Path) -> None:
    """The header alone, even with a byte-order mark and no line end (Arrow called that empty), is
    every record missing from it. The other spellings are unit cases (tests/unit/test_csv_source.py)."""
    s, t = tmp_path / "empty.csv", tmp_path / "bulk.csv"
    s.write_bytes(b"\xef\xbb\xbfId,Name,Note")
    t.write_bytes(bulk_csv(RECORDS))
    assert counts(diff(s, t, 1)) == (0, 4, 0, 4, 0, 0)


@pytest.mark.parametrize(("data", "needle"), [
    (bulk_csv(RECORDS)[:-30], "a quoted value is never closed"),  # a download cut inside a value
    (b"Id,Name,Note\n001A,x\n", "Expected 3 columns, got 2"),
])
def test_a_file_recon_cannot_read_exactly_is_exit_2_in_one_line(tmp_path: Path, data: bytes, needle: str) -> None:
    bad, good = tmp_path / "bad.csv", tmp_path / "bulk.csv"
    bad.write_bytes(data)
    good.write_bytes(bulk_csv(RECORDS))
    res = recon("diff", f"csv:{good}", f"csv:{bad}", "-k", "Id", "--json")
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert res.stdout == "" and "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("recon: error: cannot read CSV ") and "bad.csv" in lines[0]
    assert needle in lines[0], lines[0]


def test_a_directory_named_as_a_csv_is_exit_2_not_a_bug(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    good = tmp_path / "bulk.csv"
    good.write_bytes(bulk_csv(RECORDS))
    res = recon("diff", f"csv:{tmp_path / 'dir.csv'}", f"csv:{good}", "-k", "Id")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.splitlines() == [f"recon: error: cannot read CSV {tmp_path / 'dir.csv'}: Is a directory: "
                                       "check the csv: reference"]
