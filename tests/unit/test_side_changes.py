"""What a file side says changed since its watermark (reused when its BLAKE3 digest is unchanged,
read whole otherwise), and the Salesforce side's checks of a stored watermark, which need no org."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.connectors.base import FileRef, ReadRequest, SalesforceRef
from engine.connectors.files.connector import CsvSource, ParquetSource
from engine.connectors.salesforce.connector import SalesforceSource
from engine.connectors.salesforce.incremental import COVERED, usable_watermark
from engine.core.errors import Exit, UsageError

REQ = ReadRequest(columns=["id", "amount", "name"], key_columns=["id"])


def _parquet(path: Path, amounts: list[str]) -> ParquetSource:
    pq.write_table(pa.table({"id": pa.array(list(range(len(amounts))), pa.int64()),
                             "amount": pa.array([Decimal(a) for a in amounts], pa.decimal128(20, 2)),
                             "name": [f"n{i}" for i in range(len(amounts))],
                             "extra": [True] * len(amounts)}), path)
    return ParquetSource(FileRef("parquet", str(path)))


def test_an_unchanged_parquet_file_gives_no_rows_typed_as_read_and_its_count(tmp_path: Path) -> None:
    src = _parquet(tmp_path / "a.parquet", ["1.10", "2.20", "3.30"])
    first = src.changes(REQ, None)
    assert (first.mode, first.reason, first.rows_now, first.frame.height) == ("whole", "first run", 3, 3)
    assert set(first.watermark) == {"digest", "size", "sidecar", "rows"} and first.watermark["rows"] == 3
    again = src.changes(REQ, first.watermark)
    assert (again.mode, again.reason, again.rows_now, again.frame.height) == ("changes", None, 3, 0)
    assert again.frame.schema == src.read(REQ).frame.schema and again.frame.schema["amount"] == pl.Decimal(20, 2)
    assert again.columns == first.columns and again.watermark == first.watermark
    assert again.deleted is not None and again.deleted.columns == ["id"] and again.deleted.height == 0


def test_one_byte_changed_reads_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    src = _parquet(path, ["1.10", "2.20"])
    first = src.changes(REQ, None)
    data = bytearray(path.read_bytes())
    i = data.index(b"n1")
    data[i + 1:i + 2] = b"7"  # the name n1 becomes n7: same size, one byte
    path.write_bytes(bytes(data))
    got = src.changes(REQ, first.watermark)
    assert (got.mode, got.reason, got.rows_now) == ("whole", "file changed", 2)
    assert got.frame["name"].to_list() == ["n0", "n7"] and got.watermark["digest"] != first.watermark["digest"]
    assert got.watermark["size"] == first.watermark["size"]


def test_a_csv_file_and_its_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("id,amount,name\n1,1.10,a\n2,2.20,b\n")
    src = CsvSource(FileRef("csv", str(path)))
    first = src.changes(REQ, None)
    same = src.changes(REQ, first.watermark)
    assert (same.mode, same.rows_now, same.frame.height) == ("changes", 2, 0)
    assert same.frame.schema == src.read(REQ).frame.schema
    (tmp_path / "a.csv.json").write_text('{"schema": {"amount": "decimal:2"}}')
    typed = src.changes(REQ, same.watermark)
    assert (typed.mode, typed.reason) == ("whole", "sidecar changed") and typed.columns["amount"].kind == "decimal"
    assert src.changes(REQ, typed.watermark).mode == "changes"


@pytest.mark.parametrize("since", [
    "digest", {"digest": "0" * 64, "size": 1, "sidecar": None, "rows": 1},
    {"rows": True}, {"rows": -1}, {"rows": "2"}], ids=["not-an-object", "another-digest", "bool-rows",
                                                         "negative-rows", "text-rows"])
def test_a_hostile_file_watermark_reads_the_file_whole(tmp_path: Path, since: Any) -> None:
    src = _parquet(tmp_path / "a.parquet", ["1.10", "2.20"])
    good = src.changes(REQ, None).watermark
    if isinstance(since, dict) and "digest" not in since:
        since = {**good, **since}
    got = src.changes(REQ, since)
    assert got.mode == "whole" and got.rows_now == 2 and got.frame.height == 2 and got.reason


# -- Salesforce: the stored watermark ------------------------------------------------------------------
NOW = datetime(2031, 5, 4, 12, 0, 10, tzinfo=UTC)


def _since(**over: Any) -> dict[str, Any]:
    return {COVERED: "2031-05-04T11:58:00+00:00", "sobject": "Account", "where": None, **over}


def test_a_usable_salesforce_watermark() -> None:
    w, why = usable_watermark(_since(), "Account", None, NOW)
    assert w == datetime(2031, 5, 4, 11, 58, tzinfo=UTC) and why == ""
    assert usable_watermark(_since(**{COVERED: "2031-05-04T11:58:00.000+0000"}), "Account", None, NOW)[0] == w


@pytest.mark.parametrize(("since", "where", "expect"), [
    (None, None, "first run"),
    ([1], None, "not an object"),
    (_since(**{COVERED: "2031-05-04T11:58:00+00:00' OR Id != '"}), None, "is not a date"),
    (_since(**{COVERED: "x" * 500}), None, "no usable"),
    (_since(**{COVERED: "2031-05-04T12:02:00+00:00"}), None, "after the org's clock"),
    (_since(sobject="Contact"), None, "not of Account"),
    (_since(), "Name = 'x'", "condition changed"),
])
def test_an_unusable_salesforce_watermark_says_why(since: Any, where: str | None, expect: str) -> None:
    w, why = usable_watermark(since, "Account", where, NOW)
    assert w is None and expect in why and "\n" not in why and len(why) < 200


def test_as_of_is_refused_with_an_incremental_salesforce_side() -> None:
    src = SalesforceSource(SalesforceRef("Account"), None)
    with pytest.raises(UsageError) as exc:
        src.changes(ReadRequest(columns=["Id"], as_of=NOW), None)
    assert exc.value.exit_code == Exit.USAGE == 2 and "--as-of" in str(exc.value)
