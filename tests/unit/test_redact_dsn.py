"""`redact_dsn` against the DSN shapes libpq accepts: whatever libpq would send as a credential
never survives, whatever else the user wrote (host, database, a `#schema.table` suffix) does."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from engine.connectors.refs import UNPARSABLE, parse_reference, redact_dsn

# (dsn, the secret text that must be gone, what the redacted DSN still says)
CASES = [
    ("postgresql://u:pw-123@h:5432/db", ["pw-123"], "postgresql://u@h:5432/db"),
    ("postgres://u:pw-123@h/db#s.t", ["pw-123"], "postgres://u@h/db#s.t"),
    ("postgresql://u@h/db?password=pw-123", ["pw-123"], "postgresql://u@h/db"),
    ("postgresql://u@h/db?pass%77ord=pw-123", ["pw-123"], "postgresql://u@h/db"),  # percent-encoded key
    # libpq reads '#s.t' as the end of the password here, so it goes with it (refs split it off first)
    ("postgresql://u@h/db?%70assword=pw-123#s.t", ["pw-123"], "postgresql://u@h/db"),
    ("postgresql://u:p%40ss%2Fw@h/db", ["p%40ss", "p@ss", "ss/w"], "postgresql://u@h/db"),  # encoded value
    ("postgresql://u:p#w@h/db#s.t", ["p#w", "#w"], "postgresql://u@h/db#s.t"),  # '#' inside the password
    ("postgresql://u@h/db?sslpassword=key-pw&sslmode=require", ["key-pw"],
     "postgresql://u@h/db?sslmode=require"),
    ("postgresql://u:pw-123@h1:5432,h2:5433/db?application_name=a%20b", ["pw-123"],
     "postgresql://u@h1:5432,h2:5433/db?application_name=a%20b"),
    ("postgresql://u:pw-123@/db?host=/tmp/sock&port=5433", ["pw-123"], "postgresql://u@/db?host=/tmp/sock&port=5433"),
    ("postgresql://u:pw-123@h/db?passfile=/home/u/.pgpass", ["pw-123"], "postgresql://u@h/db?passfile=/home/u/.pgpass"),
    ("postgresql://u:pw-123@[::1]:5432/db", ["pw-123"], "postgresql://u@[::1]:5432/db"),
    ("host=h dbname=db password=pw-123", ["pw-123"], "dbname=db host=h"),
    ("host=h PASSWORD=pw-123", ["pw-123"], UNPARSABLE),  # libpq keywords are case-sensitive: rejected
    ("host=h password = pw-123 dbname=db", ["pw-123"], "dbname=db host=h"),
    ("host=h password='a b' dbname=db", ["a b", "b'"], "dbname=db host=h"),  # quoted value with a space
    (r"host=h password='it\'s pw' dbname=db", ["it", "s pw"], "dbname=db host=h"),  # libpq's escaped quote
    ("host=h password='it''s' dbname=db", ["it", "'s'"], UNPARSABLE),  # SQL-style quote: libpq rejects it
    (r"host=h password=x\ y dbname=db", ["x\\ y", " y"], "dbname=db host=h"),
    ("host=h password=a#b", ["a#b", "#b"], "host=h"),  # '#' in a keyword password is not a fragment
    ("host=h password=a#b#s.t", ["a#b", "#b"], "host=h"),
    ("host=h dbname=db sslpassword='k p' passfile=/p/.pgpass", ["k p"], "passfile=/p/.pgpass dbname=db host=h"),
    ("host=h oauth_client_secret=oauth-s", ["oauth-s"], "host=h"),
    ("host=h dbname=db#s.t password=pw-123", ["pw-123"], "dbname=db#s.t host=h"),
    ("postgresql://u:p@ss@h/db", ["p@ss", "ss@h"], UNPARSABLE),  # unencoded '@': libpq would show 'ss@h'
    ("mysql://u:pw-123@h/db", ["pw-123"], UNPARSABLE),
    ("host=h password='unterminated", ["unterminated"], UNPARSABLE),
]


@pytest.mark.parametrize(("dsn", "gone", "expected"), CASES, ids=[c[0] for c in CASES])
def test_redact_dsn(dsn: str, gone: list[str], expected: str) -> None:
    out = redact_dsn(dsn)
    assert out == expected
    for text in gone:
        assert text not in out
    if out != UNPARSABLE:  # what is left is still a DSN libpq reads the same way, minus the credentials
        head = out.rsplit("#", 1)[0] if out.endswith("#s.t") else out
        parsed = conninfo_to_dict(head)
        assert not {"password", "sslpassword", "oauth_client_secret"} & set(parsed)


def test_redact_dsn_is_idempotent_and_keeps_what_is_not_a_dsn() -> None:
    for dsn, _, _ in CASES:
        once = redact_dsn(dsn)
        assert redact_dsn(once) == once
    assert redact_dsn("salesforc:Account") == "salesforc:Account"  # a typo stays readable in the message
    assert redact_dsn("") == ""


def test_references_print_without_their_password() -> None:
    ref = parse_reference("postgresql://u@h/db?pass%77ord=pw-123#s.t")
    assert str(ref) == "postgresql://u@h/db#s.t"
    with pytest.raises(Exception, match="malformed") as err:
        parse_reference("postgresql://u@h/db?pass%77ord=pw-123")
    assert "pw-123" not in str(err.value)
