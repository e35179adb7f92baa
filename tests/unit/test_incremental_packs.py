"""The rows an incremental run checks are the rows it uses: a gather never hands out a view of a
memory-mapped pack (whose file could change between the digest check and the rewrite)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from engine.app.incremental import _Packs, _write_pack
from engine.workspace import StateDirectory


def _mapped(batch: pa.RecordBatch) -> list[tuple[int, int]]:
    return [(b.address, b.address + b.size) for c in batch.columns for b in c.buffers() if b is not None]


@pytest.mark.parametrize("entries", [[(2, 3)], [(0, 1), (4, 2)], [(5, 1)]])
def test_gathered_rows_are_copies_not_views_of_the_pack(tmp_path: Path, entries: list[tuple[int, int]]) -> None:
    state = StateDirectory(tmp_path / "state")
    table = pa.table({"__key": pa.array([f"k{i}" for i in range(6)], pa.large_string()),
                      "v": pa.array(range(6), pa.int64())})
    name = _write_pack(state, "source", 1, 0, table)
    store = _Packs(state)
    got = store.gather([{"parts": ((name, o, n),), "rows": n, "digest": ""} for o, n in entries])
    assert got is not None
    want = pa.concat_tables([table.slice(o, n) for o, n in entries])
    assert got.equals(want)
    spans = [s for b in store.table(name)[0] for s in _mapped(b)]
    for col in got.columns:
        for chunk in col.chunks:
            for buf in chunk.buffers():
                if buf is not None and buf.size:
                    assert not any(lo <= buf.address < hi for lo, hi in spans), "a view of the mapped pack"


def test_the_rewrite_allocates_from_the_reusing_pool_and_gives_the_default_back() -> None:
    """Inside the rewrite, Arrow allocates from glibc (which keeps freed memory); the process's own
    pool comes back afterwards, also when the rewrite fails, and buffers made inside outlive it."""
    from engine.app.incremental import _reused_memory

    before = pa.default_memory_pool().backend_name
    with _reused_memory():
        assert pa.default_memory_pool().backend_name == "system"
        kept = pa.array(range(1000), pa.int64())
    assert pa.default_memory_pool().backend_name == before
    with pytest.raises(RuntimeError), _reused_memory():
        raise RuntimeError("a failed rewrite")
    assert pa.default_memory_pool().backend_name == before
    assert kept.sum().as_py() == sum(range(1000))


def test_a_pack_whose_columns_differ_from_the_others_is_refused(tmp_path: Path) -> None:
    """Packs of one state hold the same columns in the same order; one that does not is refused by
    name (exit 4), not left to fail a concatenation later with a library's error."""
    from engine.core.errors import VerificationError

    state = StateDirectory(tmp_path / "state")
    keys = pa.array(["a", "b"], pa.large_string())
    vals = pa.array([1, 2], pa.int64())
    first = _write_pack(state, "source", 1, 0, pa.table({"__key": keys, "v": vals}))
    second = _write_pack(state, "source", 1, 1, pa.table({"v": vals, "__key": keys}))
    store = _Packs(state)
    store.table(first)
    with pytest.raises(VerificationError, match="000001-000001.arrow does not match the state's index"):
        store.table(second)
