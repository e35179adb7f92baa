"""A PostgreSQL row condition is exactly one harmless expression (engine.connectors.postgres.condition),
decided by PostgreSQL's own parser; what passes is used unchanged."""

from __future__ import annotations

import pytest

from engine.connectors.postgres.condition import check_condition
from engine.core.errors import UsageError

HOSTILE = [
    ("true)) TO STDOUT (FORMAT csv); COMMIT; TRUNCATE public.victim; --", "closes a parenthesis"),
    ("true) UNION ALL SELECT id, secret FROM other WHERE (true", "closes a parenthesis"),
    ("true; TRUNCATE public.victim", "contains ';'"),
    ("x IN (SELECT 1 UNION SELECT 2)", "set operation"),
    ("x IN (WITH d AS (DELETE FROM victim RETURNING id) SELECT id FROM d)", "WITH clause"),
    ("x IN (SELECT id FROM victim FOR UPDATE)", "locks rows"),
    ("set_config('default_transaction_read_only', 'off', false) = 'off'", "set_config"),
    ("pg_catalog.pg_terminate_backend(1) OR true", "pg_terminate_backend"),
    ("pg_cancel_backend(1)", "pg_cancel_backend"),
    ("pg_sleep(100) IS NULL", "pg_sleep"),
    ("dblink_exec('host=x', 'TRUNCATE victim') = 'OK'", "dblink_exec"),
    ("lo_export(1, '/tmp/x') = 1", "lo_export"),
    ("query_to_xml('TRUNCATE victim', true, true, '') IS NULL", "query_to_xml"),
    ("nextval('s') > 0", "nextval"),
    ("true -- and the rest", "comment"),
    ("true /* ) */", "comment"),
    ("a = $1", "parameter"),
    ("(a = 1", "open"),
    ("", "empty"),
    ("a = 'unterminated", "not valid SQL"),
    ("a = 1 ORDER BY a", "not a valid SQL expression"),
    ("a = 1 LIMIT 1", "not a valid SQL expression"),
]

LEGAL = [
    "region = 'EU' AND amount > 0",
    "id IN (SELECT id FROM other WHERE other.ok)",
    "name LIKE 'a;b' AND note = ')' AND tag <> '--x'",
    "updated_at >= now() - interval '1 day'",
    "coalesce(a, 0) > 1 OR b IS NULL",
    "$$;)$$ = x",
    "NOT (a BETWEEN 1 AND 2)",
    '"Mixed Case" = 1',
]


@pytest.mark.parametrize(("text", "why"), HOSTILE)
def test_hostile_conditions_are_refused_naming_the_option(text: str, why: str) -> None:
    with pytest.raises(UsageError) as e:
        check_condition(text, "--target-where")
    msg = str(e.value)
    assert msg.startswith("--target-where "), msg
    assert why in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("text", LEGAL)
def test_legal_conditions_pass_unchanged(text: str) -> None:
    assert check_condition(text, "--target-where") == text
