"""`csv:PATH` snapshots, read the way Salesforce Bulk API 2.0 writes them: a header row, every value
as text (types come from the other side or a sidecar), an empty field is NULL. Nothing is typed by
guessing: a value reaches normalization exactly as it stands in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.connectors.base import FileRef
from engine.connectors.files.source import extract
from engine.core.errors import UsageError


def _read(tmp_path: Path, data: bytes):  # noqa: ANN202
    p = tmp_path / "snap.csv"
    p.write_bytes(data)
    return extract(FileRef("csv", str(p)))


def test_values_are_read_as_written_never_typed_by_guessing(tmp_path: Path) -> None:
    e = _read(tmp_path, b'Id,amount,code,flag\n001A,12345678901234567890.12,00123,true\n001B,0.10,7,false\n')
    assert e.frame.rows() == [("001A", "12345678901234567890.12", "00123", "true"), ("001B", "0.10", "7", "false")]
    assert all(str(t) == "String" for t in e.frame.dtypes)


def test_quoting_embedded_newlines_and_empty_fields(tmp_path: Path) -> None:
    e = _read(tmp_path, b'Id,Name,Note\n001A,"Acme, Inc.","said ""hi""\nthen left"\n001B,,""\n')
    assert e.frame.rows() == [("001A", "Acme, Inc.", 'said "hi"\nthen left'), ("001B", None, None)]


def test_a_byte_order_mark_and_crlf_line_ends(tmp_path: Path) -> None:
    e = _read(tmp_path, b"\xef\xbb\xbfId,amount\r\n001A,1.50\r\n001B,2.00\r\n")
    assert e.frame.columns == ["Id", "amount"]
    assert e.frame.rows() == [("001A", "1.50"), ("001B", "2.00")]


def test_a_header_only_file_is_zero_rows(tmp_path: Path) -> None:
    e = _read(tmp_path, b"Id,amount\n")
    assert e.frame.columns == ["Id", "amount"] and e.frame.height == 0
    assert e.meta["rows"] == 0


@pytest.mark.parametrize(("data", "needle"), [
    (b"", "no header row"),
    (b"Id,Id\n1,2\n", "column 'Id' twice"),
    (b"Id,amount\n001A,\xff\xfe\n", "not valid UTF-8"),
])
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path, data: bytes, needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        _read(tmp_path, data)
    msg = str(exc.value)
    assert needle in msg and "snap.csv" in msg and "\n" not in msg
