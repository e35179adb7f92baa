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


def test_a_header_only_file_without_a_line_end_is_zero_rows(tmp_path: Path) -> None:
    """Arrow calls a one-line file with no line end "empty"; it is the header of a snapshot of nothing."""
    e = _read(tmp_path, b"\xef\xbb\xbfId,amount")
    assert e.frame.columns == ["Id", "amount"] and e.frame.height == 0 and e.meta["rows"] == 0


def test_a_quoted_line_end_where_arrow_used_to_cut_its_blocks(tmp_path: Path) -> None:
    """A text area value holds line ends. Arrow parsed the file in 16 MiB blocks cut at any line end:
    a quoted LF at the cut was a column-count error, and a quoted CR LF straddling it lost its LF
    (Arrow 26, even with ``newlines_in_values``). The value at byte 2^24 keeps every byte."""
    head = b"Id,Note\n"
    row = b'"001A","x"\n'  # 11 bytes of filler rows, then one row whose CR is the last byte of 16 MiB
    n, pad = divmod((1 << 24) - 1 - len(head) - len(b'"001B","a'), len(row))
    note = "a" + "b" * pad + "\r\nc\nd"
    data = head + row * n + f'"001B","{note}"\n"001C",""\n'.encode()
    assert data.index(b"\r\nc") == (1 << 24) - 1
    e = _read(tmp_path, data)
    assert e.frame.height == n + 2
    assert e.frame.rows()[-2:] == [("001B", note), ("001C", None)]


@pytest.mark.parametrize(("data", "needle"), [
    (b"", "no header row (the file is empty)"),
    (b"\xef\xbb\xbf", "no header row (the file is empty)"),
    (b"\r\nId,amount\r\n001A,1\r\n", "its first line is blank"),
    (b"Id,Id\n1,2\n", "column 'Id' twice"),
    (b"Id,amount,\n001A,1,\n", "column 3 of the header has no name"),
    (b"Id,,amount\n001A,x,1\n", "column 2 of the header has no name"),
    (b"Id,amount\n001A,\xff\xfe\n", "not valid UTF-8"),
    (b"Id,am\xe9nt\n001A,1\n", "its header is not valid UTF-8"),
    (b'Id,amount\n001A,"1.50\n001B,2.00\n001C,3.00\n', "a quoted value is never closed"),  # cut short
    (b'Id,amount\n001A,1.50\n001B,"2.0', "a quoted value is never closed"),
    (b"Id,amount\n001A,1.50,x\n", "Expected 2 columns, got 3"),
    (b"Id,amount\n001A\n", "Expected 2 columns, got 1"),
])
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path, data: bytes, needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        _read(tmp_path, data)
    msg = str(exc.value)
    assert needle in msg and "snap.csv" in msg and "\n" not in msg


def test_a_directory_named_as_a_csv_is_a_usage_error(tmp_path: Path) -> None:
    """An IsADirectoryError was exit 70 ("a bug") with a traceback: the reference is wrong, not recon."""
    (tmp_path / "snap.csv").mkdir()
    with pytest.raises(UsageError, match=r"cannot read CSV .*snap\.csv: Is a directory"):
        extract(FileRef("csv", str(tmp_path / "snap.csv")))


# -- the sidecar (PATH.json): the one place types come from when the other side gives none ----------
def _typed(tmp_path: Path, data: bytes, side: str, fmt: str = "csv"):  # noqa: ANN202
    from engine.connectors.files.source import columns_of

    p = tmp_path / f"snap.{fmt}"
    p.write_bytes(data)
    (tmp_path / f"snap.{fmt}.json").write_text(side)
    return columns_of(FileRef(fmt, str(p)))


def test_a_sidecar_types_columns_in_either_spelling_and_any_case(tmp_path: Path) -> None:
    cols = _typed(tmp_path, b"Id,Amount,Close,Rate,Note\n", '{"schema": {"id": {"kind": "id"}, "AMOUNT": '
                  '{"kind": "decimal", "scale": 2}, "Close": "date", "Rate": "decimal:6", "Note": {"kind": "text"}},'
                  ' "rows": 0}')
    got = {n: (c.kind, c.scale) for n, c in cols.items()}
    assert got == {"Id": ("id", None), "Amount": ("decimal", 2), "Close": ("date", None), "Rate": ("decimal", 6),
                   "Note": ("text", None)}


def test_without_a_sidecar_every_csv_column_is_text(tmp_path: Path) -> None:
    from engine.connectors.files.source import columns_of

    p = tmp_path / "snap.csv"
    p.write_bytes(b"Id,amount\n001A,1.50\n")
    assert {c.kind for c in columns_of(FileRef("csv", str(p))).values()} == {"text"}


def test_describing_a_csv_reads_its_header_not_its_rows(tmp_path: Path) -> None:
    """`recon diff` describes both sides before reading them: a CSV's description is its header and
    sidecar, so the file is parsed once, not twice."""
    from engine.connectors.files.source import columns_of

    p = tmp_path / "snap.csv"
    p.write_bytes(b"Id,amount\n" + b"001A,1.00\n" * 10_000 + b"001B,\xff\xfe\n")  # a bad row only the read finds
    assert list(columns_of(FileRef("csv", str(p)))) == ["Id", "amount"]
    with pytest.raises(UsageError, match="UTF-8"):
        extract(FileRef("csv", str(p)))


def test_parquet_string_columns_take_the_sidecar_types_and_typed_ones_keep_theirs(tmp_path: Path) -> None:
    import polars as pl

    p = tmp_path / "snap.parquet"
    pl.DataFrame({"Id": ["a"], "amount": ["1.50"], "n": [3]}).write_parquet(p)
    (tmp_path / "snap.parquet.json").write_text('{"schema": {"amount": "decimal:2", "n": "text"}}')
    from engine.connectors.files.source import columns_of

    got = {n: (c.kind, c.scale) for n, c in columns_of(FileRef("parquet", str(p))).items()}
    assert got == {"Id": ("text", None), "amount": ("decimal", 2), "n": ("int", None)}
    assert extract(FileRef("parquet", str(p)), ["amount"]).columns["amount"].kind == "decimal"


@pytest.mark.parametrize(("side", "needle"), [
    ('{"schema": {"amout": "decimal:2"}}', "column 'amout', which snap.csv does not have"),
    ('{"schema": {"amount": "money"}}', "use one of"),
    ('{"schema": {"amount": "decimal:-1"}}', "scale"),
    ('{"schema": {"amount": {"kind": "decimal", "scale": "two"}}}', "scale"),
    ('{"schema": ["amount"]}', "must be an object"),
    ("{", "cannot read the sidecar"),
])
def test_a_wrong_sidecar_is_one_line_naming_it(tmp_path: Path, side: str, needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        _typed(tmp_path, b"Id,amount\n", side)
    msg = str(exc.value)
    assert needle in msg and "snap.csv.json" in msg and "\n" not in msg, msg


def test_the_writer_and_the_reader_agree(tmp_path: Path) -> None:
    from engine.connectors.files import sidecar
    from engine.core.normalize import ColumnType

    data = tmp_path / "x.csv"
    data.write_text("Id,amount,seen\n")
    side = sidecar.write(data, {"Id": ColumnType("id"), "amount": ColumnType("decimal", 4),
                                "seen": ColumnType("timestamp", precision="ms")}, rows=0)
    assert side == tmp_path / "x.csv.json"
    assert sidecar.read_schema(data, ["Id", "amount", "seen"]) == {
        "Id": sidecar.Declared("id"), "amount": sidecar.Declared("decimal", 4), "seen": sidecar.Declared("timestamp")}
