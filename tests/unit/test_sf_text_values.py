"""Salesforce text-area values hold line ends. Both ways a page reaches Arrow (a Bulk CSV page, a
REST page routed through write_csv) must give them back exactly, wherever Arrow would have cut its
blocks (16 MiB for a Bulk page, 1 MiB by default)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.csv as pacsv

from engine.connectors.salesforce.source import _cast_strings, _parse_pages

TYPES = {"Id": pa.string(), "Description": pa.string()}


def _rows(n: int) -> tuple[list[str], list[str]]:
    ids = [f"001{i:012d}" for i in range(n)]
    return ids, [f"line {i}\r\nsecond \"q\" line\nthird" for i in range(n)]


def test_a_rest_page_with_line_ends_in_values_survives_the_csv_round_trip() -> None:
    ids, vals = _rows(60_000)  # ~2.4 MB of CSV: past Arrow's default 1 MiB block
    out = _cast_strings(pa.table({"Id": ids, "Description": vals}), TYPES)
    assert out.column("Description").to_pylist() == vals
    assert out.column("Id").to_pylist() == ids


def test_a_bulk_page_with_a_quoted_line_end_across_16_mib_parses_exactly() -> None:
    ids, vals = _rows(2_000)
    buf = io.BytesIO()
    pacsv.write_csv(pa.table({"Id": ids, "Description": vals}), buf)
    head, body = buf.getvalue().split(b"\n", 1)
    row = b'"001000000000000","' + b"x" * 100 + b'\r\ny"\n'
    # pad with whole rows so that a quoted CR LF straddles byte 2**24: CR last of one block, LF first of the next
    n = ((1 << 24) - len(head) - 2 - len(b'"001000000000000","') - 100) // len(row)
    filler = row * n
    cut = b'"001999999999999","' + b"z" * ((1 << 24) - len(head) - 2 - len(filler) - len(b'"001999999999999","'))
    data = head + b"\n" + filler + cut + b'\r\nend"\n' + body
    assert data.index(b'\r\nend') == (1 << 24) - 1
    tbl = _parse_pages([data.decode()], ["Id", "Description"], TYPES)
    got = tbl.column("Description").to_pylist()
    assert got[n] == cut.split(b'","')[1].decode() + "\r\nend"
    assert got[:n] == ["x" * 100 + "\r\ny"] * n and got[n + 1:] == vals
