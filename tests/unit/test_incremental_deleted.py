"""How an incremental run finds the rows a side deleted without listing them (`_find_deleted`).

The fast way compares 64-bit hashes of the keys; it can only miss a deleted key (one whose hash
equals a present key's), never invent one. When it finds fewer than the side's count implies, the
exact join of the key strings must decide. A real collision cannot be produced on demand, so one
test replaces the hash by a constant: every key collides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from engine.app import incremental as inc
from engine.connectors.base import Extract
from engine.core.normalize import ColumnType, FieldSpec, SideOptions
from engine.workspace import StateDirectory

KEY = (FieldSpec("id", "id", ColumnType("text"), is_key=True),)


@dataclass
class _Keys:
    """A side that holds ``keys`` now: only the key-only read is used here (no database needed)."""

    keys: list[str]
    ref: str = "test#side"
    side: SideOptions = field(default_factory=SideOptions)
    reads: int = 0

    def read(self, req: Any) -> Extract:
        self.reads += 1
        assert req.columns == ["id"], "the deletion check reads the key columns only"
        return Extract(pl.DataFrame({"id": self.keys}, schema={"id": pl.Utf8}), {})


def _side(keys: list[str]) -> inc._Side:
    return inc._Side("target", _Keys(keys), KEY, None, "updated_at")  # type: ignore[arg-type]


HELD = pl.Series("__key", ["a1", "a2", "a3", "a4", "a5", "a6"])


@pytest.mark.parametrize("expect", [None, 0, 2])
def test_the_deleted_keys_are_exactly_those_the_side_no_longer_holds(tmp_path: Path, expect: int | None) -> None:
    side = _side(["a1", "a3", "a4", "a6", "z9"])  # a2 and a5 deleted; z9 is new (not the state's business)
    gone = inc._find_deleted(side, StateDirectory(tmp_path), [], [], HELD, expect=expect)
    assert sorted(gone.to_list()) == ["a2", "a5"]
    assert side.src.reads == 1  # type: ignore[attr-defined]


def test_a_count_the_hashes_cannot_meet_falls_back_to_the_exact_join(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # every key collides (a hash of one value): the hashes find no deleted key, the count says two
    # went, so the exact join must decide
    monkeypatch.setattr(inc, "_key_hash", lambda keys: pl.Series(keys.name, [7] * len(keys), dtype=pl.UInt64))
    side = _side(["a1", "a3", "a4", "a6"])
    gone = inc._find_deleted(side, StateDirectory(tmp_path), [], [], HELD, expect=2)
    assert sorted(gone.to_list()) == ["a2", "a5"]


def test_nothing_deleted_finds_nothing(tmp_path: Path) -> None:
    side = _side(HELD.to_list())
    for expect in (None, 0, 1):
        assert inc._find_deleted(side, StateDirectory(tmp_path), [], [], HELD, expect=expect).len() == 0
