"""Parquet and CSV snapshot files as connectors (see :mod:`engine.connectors.files.source`)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from engine.connectors.base import Extract, FileRef, NoSnapshot, ReadRequest, SideChanges, SourceColumn
from engine.core.errors import UsageError
from engine.core.normalize import SideOptions

_PROVENANCE = ("path", "rows")


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def blake3_digest(path: Path) -> str:
    """BLAKE3 of a file's bytes (memory-mapped, on every core for a large file)."""
    import blake3

    if path.stat().st_size == 0:  # an empty file cannot be mapped
        return blake3.blake3(b"").hexdigest()
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.hexdigest()


def file_state(path: Path) -> dict[str, Any]:
    """What an incremental run keeps of a file: its digest and size, and its sidecar's digest (the
    sidecar types the columns: a changed type is a changed snapshot)."""
    from engine.connectors.files import sidecar

    side = sidecar.path_for(path)
    return {"digest": blake3_digest(path), "size": path.stat().st_size,
            "sidecar": blake3_digest(side) if side.is_file() else None}


def _unchanged(since: Any, now: dict[str, Any]) -> str | None:
    """None when ``since`` describes these bytes (and holds a usable row count), else why not."""
    if since is None:
        return "first run"
    if not isinstance(since, dict):
        return "the stored watermark is not an object: read whole"
    if since.get("digest") != now["digest"] or since.get("size") != now["size"]:
        return "file changed"
    if since.get("sidecar") != now["sidecar"]:
        return "sidecar changed"
    rows = since.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        return "the stored watermark has no usable row count: read whole"
    return None


class FileSource:
    system: ClassVar[str] = "file"
    secret_env: ClassVar[tuple[str, ...]] = ()
    timestamp_precision = "us"
    side = SideOptions()

    def __init__(self, ref: FileRef, config: Any = None) -> None:
        self.ref = ref
        self.config = config

    def describe(self) -> dict[str, SourceColumn]:
        from engine.connectors.files import source

        return source.columns_of(self.ref)

    def quick_columns(self) -> list[str] | None:
        return None

    def missing_column_hint(self) -> str:
        return ""

    def read(self, req: ReadRequest) -> Extract:
        from engine.connectors.files import source

        if req.where:
            raise UsageError(f"a condition cannot filter a {self.ref.format} file ({self.ref.path})", field="where")
        return source.extract(self.ref, req.columns, key_range=req.key_range, key_fields=req.key_fields)

    def changes(self, req: ReadRequest, since: dict[str, Any] | None, *,
                overlap: timedelta | None = None) -> SideChanges:
        """A file is reused whole or re-read whole: unchanged (the BLAKE3 digest of its bytes and of
        its sidecar's, as in ``since``) gives no rows and the count ``since`` holds; anything else
        reads it as :meth:`read` does, with the reason. The digest is taken before the read, so a
        file replaced during the read is re-read next time. ``overlap`` has no meaning for a file."""
        del overlap
        if req.where:
            raise UsageError(f"a condition cannot filter a {self.ref.format} file ({self.ref.path})", field="where")
        path = Path(self.ref.path)
        if not path.is_file():
            raise UsageError(f"file not found: {path} (check the {self.ref.format}: reference)")
        now = file_state(path)
        reason = _unchanged(since, now)
        if reason is None:
            assert since is not None
            from engine.connectors.files import source

            empty = source.empty_extract(self.ref, req.columns)
            keys = [c for c in (req.key_columns or []) if c in empty.frame.columns]
            rows = int(since["rows"])
            return SideChanges(mode="changes", frame=empty.frame, columns=empty.columns,
                               watermark={**now, "rows": rows}, deleted=empty.frame.select(keys) if keys else None,
                               rows_now=rows, meta={**empty.meta, "rows_reread": 0, "digest": now["digest"]})
        ext = self.read(replace(req, key_range=None, key_fields=()))
        return SideChanges(mode="whole", frame=ext.frame, columns=ext.columns,
                           watermark={**now, "rows": ext.frame.height}, rows_now=ext.frame.height, reason=reason,
                           meta={**ext.meta, "rows_reread": ext.frame.height, "digest": now["digest"]})

    def open_snapshot(self) -> NoSnapshot:
        """A file is its own snapshot: its digest in the manifest pins what every task read."""
        return NoSnapshot()

    @classmethod
    def provenance(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """Path, rows and the file's SHA-256: the digest pins the exact bytes that were diffed."""
        out = {k: meta[k] for k in _PROVENANCE if meta.get(k) is not None}
        p = Path(str(meta.get("path") or ""))
        if p.is_file():
            out["sha256"] = file_digest(p)
        return out

    @classmethod
    def lineage_dataset(cls, inp: dict[str, Any]) -> tuple[str, str]:
        return "file", str(inp.get("path", ""))


class ParquetSource(FileSource):
    system: ClassVar[str] = "parquet"

    def quick_columns(self) -> list[str] | None:
        """The Parquet footer: no data read."""
        import pyarrow.parquet as pq

        return list(pq.read_schema(self.ref.path).names)

    def keys_as_canonical(self, key_fields: tuple[Any, ...], snapshot: str | None = None) -> bool:
        """Whether row groups may be pruned by the stored key statistics: false when a text key
        holds a value not in Unicode NFC (its canonical form sorts elsewhere than its statistics
        say). Reads the key column once per run."""
        import polars as pl
        import pyarrow.parquet as pq

        del snapshot  # a file is checked by its digest, not a snapshot
        keys = [f for f in key_fields if f.is_key]
        if not keys or keys[0].ctype.kind not in ("text", "id"):
            return True
        names = {n.lower(): n for n in pq.read_schema(self.ref.path).names}
        name = names.get(keys[0].column.lower())
        if name is None:
            return True
        col = pl.from_arrow(pq.read_table(self.ref.path, columns=[name]).column(0))
        if not isinstance(col, pl.Series) or col.dtype != pl.Utf8:
            return True
        return bool((col.str.normalize("NFC") == col).fill_null(True).all())

    def estimate(self) -> tuple[int, int] | None:
        """(rows, bytes per row) from the footer: no data is read."""
        import pyarrow.parquet as pq

        try:
            md = pq.ParquetFile(self.ref.path).metadata
        except (OSError, ValueError):
            return None
        rows = md.num_rows
        size = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
        return rows, (size // rows if rows else 0)


class CsvSource(FileSource):
    system: ClassVar[str] = "csv"
