"""NUMERIC read exactly by every PostgreSQL reader (psql children, ADBC, in-process psycopg), at
every scale from 0 to 18 and at the edges of the type: issue 18 asks that ADBC keep NUMERIC exact
before it may read ranges. The reference is PostgreSQL's own text of each value, parsed as
``Decimal``: no float ever stands between the server and the comparison."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from engine.connectors.base import parse_reference
from engine.connectors.postgres import source as pg_source

SCALES = range(19)


def _values(scale: int) -> list[str]:
    """Texts of numeric(38, scale) values: the largest and smallest the type holds, the smallest
    step, values around 2**62 and 2**63 unscaled (where a scaled int64 stops fitting), a value
    with every digit distinct, zero and minus zero."""
    big = "9" * (38 - scale) + ("." + "9" * scale if scale else "")
    step = "0." + "0" * (scale - 1) + "1" if scale else "1"
    out = [big, "-" + big, step, "-" + step, "0", "-0"]
    for unscaled in (2**62 - 1, 2**62, 2**63 - 1, 2**63, 2**64 + 7, 12345678901234567890123456789012345678):
        digits = str(unscaled)
        if len(digits) > 38:
            continue
        text = digits[:-scale] + "." + digits[-scale:] if scale and len(digits) > scale else (
            "0." + digits.rjust(scale, "0") if scale else digits)
        out += [text, "-" + text]
    return out


ROWS = max(len(_values(s)) for s in SCALES)


@pytest.fixture(scope="module")
def numeric_table(embedded_pg) -> str:  # noqa: ANN001
    cols = ", ".join(f"n{s} numeric(38, {s})" for s in SCALES)
    with psycopg.connect(embedded_pg.info.dsn, passfile=str(embedded_pg.paths.pgpass_file), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS numeric_exact")
        c.execute(f"CREATE TABLE numeric_exact (id int8 PRIMARY KEY, {cols})")
        by_scale = {s: _values(s) for s in SCALES}
        for i in range(ROWS + 1):  # the last row is all NULL
            vals = [by_scale[s][i] if i < len(by_scale[s]) else None for s in SCALES]
            c.execute(f"INSERT INTO numeric_exact VALUES (%s, {', '.join(['%s::numeric'] * len(vals))})",  # noqa: S608
                      [i, *vals])
    return f"{embedded_pg.info.dsn}#public.numeric_exact"


@pytest.mark.parametrize("reader", ["adbc", "psql", "psycopg"])
def test_numeric_is_exact_at_every_scale(numeric_table: str, reader: str, embedded_pg,  # noqa: ANN001
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSFILE", str(embedded_pg.paths.pgpass_file))
    monkeypatch.setenv("RECON_PG_READER", reader)
    got = pg_source.extract(parse_reference(numeric_table), None, None)
    assert got.meta["reader"] == reader
    frame = got.frame.sort("id")
    names = [f"n{s}" for s in SCALES]
    with psycopg.connect(embedded_pg.info.dsn) as c:
        ref = c.execute(f"SELECT {', '.join(f'{n}::text' for n in names)} FROM numeric_exact ORDER BY id").fetchall()  # noqa: S608
    assert frame.height == len(ref) == ROWS + 1
    for j, (name, s) in enumerate(zip(names, SCALES, strict=True)):
        col = frame[name]
        assert str(col.dtype) == f"Decimal(precision=38, scale={s})", (name, col.dtype)
        want = [None if r[j] is None else Decimal(r[j]) for r in ref]
        have = col.to_list()
        assert have == want, (name, [(h, w) for h, w in zip(have, want, strict=True) if h != w][:3])
        # the digits at the column's scale, as PostgreSQL wrote them (an exact value at another scale
        # would hash differently in the canonical encoding)
        assert {v.as_tuple().exponent for v in have if v is not None} == {-s}, name
