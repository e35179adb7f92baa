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
