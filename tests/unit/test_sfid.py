import numpy as np
import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from engine.core import sfid


def test_reference_example() -> None:
    assert sfid.suffix("003RO0000035WQg") == "YAM"
    assert sfid.to18("003RO0000035WQg") == "003RO0000035WQgYAM"


def test_case_matters_in_the_15_char_form() -> None:
    a, b = sfid.to18("001RO0000035WQg"), sfid.to18("001RO0000035WQG")
    assert a != b and a.lower() == b.lower()[:15] + a.lower()[15:] and a[15:] != b[15:]


def test_bad_suffix_rejected() -> None:
    assert not sfid.is_valid("003RO0000035WQgAAA")
    assert not sfid.is_valid("003RO0000035WQ")


@given(st.integers(min_value=0, max_value=62**6 - 2000), st.integers(min_value=1, max_value=1500))
def test_generated_ids_valid_and_byte_ordered(start: int, count: int) -> None:
    got = sfid.make_ids("001", start, count)
    assert len(got) == count
    assert got == sorted(got)  # Python str order is code point order = byte order for ASCII
    assert all(sfid.is_valid(x) for x in got[:50])
    assert all(sfid.to18(x[:15]) == x for x in got[-50:])


_ID_CHARS = st.sampled_from(sfid.BASE62)


def _id_like() -> st.SearchStrategy[str]:
    """Valid 15- and 18-character ids and near misses: wrong suffix, wrong length, other characters."""
    body = st.text(_ID_CHARS, min_size=15, max_size=15)
    return st.one_of(
        body,
        body.map(lambda b: b + sfid.suffix(b)),
        st.tuples(body, st.text(_ID_CHARS, min_size=3, max_size=3)).map("".join),  # random suffix: mostly wrong
        body.map(lambda b: b + sfid.suffix(b).lower()),
        st.text(_ID_CHARS, max_size=20),
        st.text(max_size=20),  # any characters, non-ASCII and newlines included
        body.map(lambda b: b + "\n"),
    )


@given(st.lists(st.one_of(_id_like(), st.none()), max_size=60))
def test_vectorised_checks_agree_with_the_scalar_rule(values: list[str | None]) -> None:
    col = pl.Series(values, dtype=pl.Utf8)
    want_valid = [v is not None and sfid.is_valid(v) for v in values]
    assert sfid.are_valid(col).tolist() == want_valid
    # with_suffixes: a 15-character id gets its suffix, anything else is left as it is
    want = [sfid.to18(v) if v is not None and len(v) == 15 and sfid.is_valid(v) else v for v in values]
    assert sfid.with_suffixes(col).to_list() == want
    assert [sfid.to18_or_none(v) for v in values] == [sfid.to18(v) if ok else None
                                                       for v, ok in zip(values, want_valid, strict=True)]


def test_vectorised_checks_on_random_ids() -> None:
    rng = np.random.default_rng(7)
    alphabet = np.frombuffer(sfid.BASE62.encode(), dtype=np.uint8)
    bodies = alphabet[rng.integers(0, 62, size=(20_000, 15))]
    good = np.concatenate([bodies, sfid.suffixes(bodies)], axis=1).view("S18").ravel().astype(str).tolist()
    assert [sfid.suffix(b[:15]) for b in good[:2000]] == [b[15:] for b in good[:2000]]
    flip = rng.random(len(good)) < 0.3  # one suffix character replaced: mostly invalid now
    pos = rng.integers(15, 18, size=len(good))
    ids = [g[:p] + sfid.BASE62[rng.integers(0, 62)] + g[p + 1:] if f else g
           for g, f, p in zip(good, flip, pos, strict=True)]
    valid = sfid.are_valid(pl.Series(ids))
    assert valid.tolist() == [sfid.is_valid(x) for x in ids]
    assert 0 < int((~valid).sum()) < len(ids)
    short = pl.Series([g[:15] for g in good])
    assert sfid.with_suffixes(short).to_list() == good


def test_to18_or_none() -> None:
    assert sfid.to18_or_none("003RO0000035WQg") == "003RO0000035WQgYAM"
    assert sfid.to18_or_none("003RO0000035WQgYAM") == "003RO0000035WQgYAM"
    for bad in ("003RO0000035WQgAAA", "", "003RO0000035WQ", None, 3, b"003RO0000035WQg"):
        assert sfid.to18_or_none(bad) is None
    assert sfid.to18_or_none("003RO0000035WQgAAA") is None  # cached verdicts stay the same


def test_with_suffixes_matches_reference() -> None:
    ids = ["001RO0000035WQg", "001ro0000035wqg", "001000000000000", "0015g0000000001AAA"]
    assert sfid.with_suffixes(pl.Series(ids)).to_list() == [sfid.to18(i) for i in ids]
