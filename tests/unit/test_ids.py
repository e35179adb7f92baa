"""Published test vectors for the deterministic event id (layout v1). Changing any of these breaks
every ledger and warehouse written so far, so these values are frozen."""

import uuid

import pytest

from engine.core import ids

ORG = "00D5g0000000001EAA"
ACC = "0015g0000000001AAA"

VECTORS = [
    # (org_id, record_id, event_type, event_time, expected id)
    (ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z", "983e2908-4d48-5f72-aebb-29619c55b973"),
]


def test_namespace_is_frozen() -> None:
    assert ids.NAMESPACE == uuid.uuid5(uuid.NAMESPACE_URL, "urn:recon:event:v1")
    assert str(ids.NAMESPACE) == "1526781b-12d5-5af7-8e35-284e07ffeeda"


def test_rfc_uuid5_vector_holds_for_our_sha1_path() -> None:
    # RFC 9562's own vector, through the same byte-level construction event_id uses
    assert str(uuid.UUID(bytes=_raw(uuid.NAMESPACE_DNS, b"www.example.com"))) == "2ed6657d-e927-568b-95e1-2665a8aea6a2"


def _raw(ns: uuid.UUID, name: bytes) -> bytes:
    import hashlib

    d = bytearray(hashlib.sha1(ns.bytes + name).digest()[:16])
    d[6] = (d[6] & 0x0F) | 0x50
    d[8] = (d[8] & 0x3F) | 0x80
    return bytes(d)


@pytest.mark.parametrize(("org", "rec", "typ", "ts", "expected"), VECTORS)
def test_vectors(org: str, rec: str, typ: str, ts: str, expected: str) -> None:
    assert ids.event_id(org, rec, typ, ts) == expected
    assert ids.event_ids([org], [rec], [typ], [ts]) == [expected]


def test_name_layout_is_length_prefixed() -> None:
    name = f"18:{ORG}18:{ACC}8:purchase24:2026-08-01T10:00:00.123Z"
    assert ids.event_id(ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z") == str(uuid.uuid5(ids.NAMESPACE, name))


def test_equivalent_spellings_give_the_same_id() -> None:
    base = ids.event_id(ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z")
    assert ids.event_id(ORG[:15], ACC[:15], "purchase", "2026-08-01T10:00:00.123Z") == base
    assert ids.event_id(ORG, ACC, "purchase", "2026-08-01T12:00:00.123999+02:00") == base  # truncated, not rounded
    assert ids.event_id(ORG, ACC, "purchase", "2026-08-01T10:00:00.123+0000") == base


def test_near_misses_differ() -> None:
    base = ids.event_id(ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z")
    assert ids.event_id(ORG, ACC, "purchase", "2026-08-01T10:00:00.124Z") != base
    assert ids.event_id(ORG, ACC, "refund", "2026-08-01T10:00:00.123Z") != base
    assert ids.event_id(ORG, "0015g0000000002AAA", "purchase", "2026-08-01T10:00:00.123Z") != base
    # field boundaries cannot be shifted: "ab"+"c" is not "a"+"bc"
    assert ids._name(["ab", "c"]) != ids._name(["a", "bc"])


def test_invalid_fields_raise_or_yield_none() -> None:
    with pytest.raises(ValueError):
        ids.event_id(ORG, "not-an-id", "purchase", "2026-08-01T10:00:00.123Z")
    with pytest.raises(ValueError):
        ids.event_id(ORG, ACC, "purchase", "yesterday")
    assert ids.event_ids([ORG, ORG], [ACC, "bad"], ["purchase", "purchase"], ["nope", "2026-08-01T10:00:00.123Z"]) == [None, None]


def test_vectorised_name_matches_the_reference_layout() -> None:
    import polars as pl

    rows = [(ORG, ACC, "purchase", "2026-08-01T10:00:00.123Z"), (ORG, "0015g0000000002AAA", "réfund", "2026-08-01T10:00:00.000Z")]
    df = pl.DataFrame(rows, schema=["o", "r", "t", "ts"], orient="row")
    got = df.select(ids.name_expr("o", "r", "t", "ts").alias("n"))["n"].to_list()
    assert [g.encode() for g in got] == [ids._name(r) for r in rows]


def test_canonical_times_vectorised() -> None:
    import polars as pl

    s = pl.Series(["2026-08-01T10:00:00.123Z", "2026-08-01T12:00:00.123456+02:00", "garbage", None])
    assert ids.canonical_times(s).to_list() == ["2026-08-01T10:00:00.123Z", "2026-08-01T10:00:00.123Z", None, None]
