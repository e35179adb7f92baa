# ruff: noqa: S608 - the f-strings here are SOQL sent to the local org (the server binds literals as parameters)
"""SOQL subset: parsing, validation against describe, and translation to parameterised SQL (no database)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.local.sfapi import soql
from engine.local.sfapi.soql import SoqlError, compile_query, select_sql, where_sql

UTC = dt.UTC


def sql_of(text: str, *, include_deleted: bool = False) -> tuple[str, list[object]]:
    q = compile_query(text)
    stmt, params = select_sql(q, [soql.csv_expr(f) for f in q.fields] or [soql.sql.SQL("1")],
                              include_deleted=include_deleted)
    return stmt.as_string(None), params


def where_of(text: str) -> tuple[str, list[object]]:
    w, params = where_sql(compile_query(text), include_deleted=True)
    return w.as_string(None), params


def error_of(text: str, **kw: bool) -> SoqlError:
    with pytest.raises(SoqlError) as exc:
        compile_query(text, **kw)
    return exc.value


# -- parsing and name resolution ----------------------------------------------------------------------

def test_fields_resolve_case_insensitively_to_canonical_names() -> None:
    q = compile_query("select id, NAME, customer_lifetime_value__c, account.Industry from ACCOUNT")
    assert q.sobject.name == "Account"
    assert [f.name for f in q.fields] == ["Id", "Name", "Customer_Lifetime_Value__c", "Industry"]
    assert not q.is_count and q.where is None and q.limit is None


def test_count_limit_offset_and_order() -> None:
    q = compile_query("SELECT COUNT() FROM Account")
    assert q.is_count and q.fields == ()
    q = compile_query("SELECT Id FROM Account ORDER BY Name, SystemModstamp DESC, Industry ASC NULLS LAST, "
                      "AnnualRevenue DESC NULLS FIRST LIMIT 10 OFFSET 20")
    assert [(f.name, desc, nf) for f, desc, nf in q.order_by] == [
        ("Name", False, True), ("SystemModstamp", True, False), ("Industry", False, False),
        ("AnnualRevenue", True, True)]
    assert (q.limit, q.offset) == (10, 20)


def test_keywords_are_case_insensitive_and_whitespace_free_form() -> None:
    q = compile_query("sElEcT Id\n  FrOm Account\n wHeRe Name = 'x'\n\tOrDeR bY Id lImIt 5")
    assert q.limit == 5 and q.where[0] == "cmp"


# -- translation ------------------------------------------------------------------------------------

def test_select_translation_is_parameterised_and_ordered_by_id() -> None:
    text, params = sql_of("SELECT Id, Name FROM Account WHERE Name = 'Acme' LIMIT 5")
    assert text == ('SELECT "Id", "Name" FROM "Account" WHERE "IsDeleted" = false AND lower("Name") = lower(%s) '
                    'ORDER BY "Id" ASC LIMIT %s')
    assert params == ["Acme", 5]


def test_query_all_drops_the_is_deleted_filter() -> None:
    text, _ = sql_of("SELECT Id FROM Account", include_deleted=True)
    assert "IsDeleted" not in text
    text, _ = sql_of("SELECT Id FROM User")  # no IsDeleted column at all
    assert "IsDeleted" not in text


def test_explicit_order_gets_nulls_placement_and_id_tiebreaker() -> None:
    text, _ = sql_of("SELECT Id FROM Account ORDER BY Name DESC, Industry")
    assert text.endswith('ORDER BY "Name" DESC NULLS LAST, "Industry" ASC NULLS FIRST, "Id" ASC')
    text, _ = sql_of("SELECT Id FROM Account ORDER BY Id DESC")
    assert text.endswith('ORDER BY "Id" DESC NULLS LAST')


def test_boolean_logic_and_two_valued_null_semantics() -> None:
    text, params = where_of("SELECT Id FROM Account WHERE (AnnualRevenue > 5 OR Industry != 'Banking') "
                            "AND NOT Name LIKE 'a%' AND IsDeleted = false")
    assert text == (' WHERE ((("AnnualRevenue" > %s) IS TRUE OR lower("Industry") IS DISTINCT FROM lower(%s)) '
                    'AND (NOT ("Name" ILIKE %s)) AND "IsDeleted" = %s)')
    assert params == [Decimal("5"), "Banking", "a%", False]


def test_null_comparisons() -> None:
    assert where_of("SELECT Id FROM Account WHERE Industry = null")[0] == ' WHERE "Industry" IS NULL'
    assert where_of("SELECT Id FROM Account WHERE Industry != NULL")[0] == ' WHERE "Industry" IS NOT NULL'
    text, params = where_of("SELECT Id FROM Account WHERE Industry NOT IN ('Banking', null)")
    assert text == (' WHERE ((lower("Industry") = ANY(ARRAY(SELECT lower(x) FROM unnest(%s::text[]) AS x)) '
                    'OR "Industry" IS NULL)) IS NOT TRUE')
    assert params == [["Banking"]]
    assert error_of("SELECT Id FROM Account WHERE AnnualRevenue > null").error_code == "MALFORMED_QUERY"


def test_ids_in_equality_and_in_are_normalised_to_18_chars() -> None:
    _, params = where_of("SELECT Id FROM Account WHERE Id = '0015g0000000001' OR OwnerId IN ('0055g0000000001AAA')")
    assert params == ["0015g0000000001AAA", ["0055g0000000001AAA"]]
    text, params = where_of("SELECT Id FROM Account WHERE Id >= '001000000000000' AND Id < '001zzzzzzzzzzzz'")
    assert text == ' WHERE ("Id" >= %s AND "Id" < %s)' and params == ["001000000000000", "001zzzzzzzzzzzz"]
    err = error_of("SELECT Id FROM Account WHERE Id = 'abc'")
    assert err.error_code == "INVALID_QUERY_FILTER_OPERATOR" and "invalid ID field: abc" in err.message


@pytest.mark.parametrize(("literal", "expected"), [
    ("2026-01-02T03:04:05Z", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2026-01-02T03:04:05.000Z", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2026-01-02T03:04:05.120Z", dt.datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)),
    ("2026-01-02T03:04:05+00:00", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2026-01-02T03:04:05-08:00", dt.datetime(2026, 1, 2, 11, 4, 5, tzinfo=UTC)),
])
def test_datetime_literals(literal: str, expected: dt.datetime) -> None:
    _, params = where_of(f"SELECT Id FROM Account WHERE SystemModstamp >= {literal}")
    assert params == [expected]


def test_date_number_and_boolean_literals() -> None:
    _, params = where_of("SELECT Id FROM Opportunity WHERE CloseDate <= 2026-01-02 AND Amount = -12.50 "
                         "AND IsWon = TRUE AND Probability IN (10, 20.5)")
    assert params == [dt.date(2026, 1, 2), Decimal("-12.50"), True, [Decimal(10), Decimal("20.5")]]


@pytest.mark.parametrize(("literal", "value"), [
    (r"'O\'Brien'", "O'Brien"), (r"'a\\b'", "a\\b"), (r"'line\nbreak'", "line\nbreak"), (r"'tab\there'", "tab\there"),
    (r"'\"q\"'", '"q"'), (r"'caf\u00e9'", "café"), ("'50%'", "50%"),
])
def test_string_escapes(literal: str, value: str) -> None:
    assert where_of(f"SELECT Id FROM Account WHERE Name = {literal}")[1] == [value]


def test_like_keeps_wildcard_escapes_for_postgres() -> None:
    assert where_of(r"SELECT Id FROM Account WHERE Name LIKE '50\%\_off\\'")[1] == [r"50\%\_off\\"]
    assert error_of(r"SELECT Id FROM Account WHERE Name = '50\%'").error_code == "MALFORMED_QUERY"


def test_formatting_expressions_follow_salesforce_conventions() -> None:
    acct = compile_query("SELECT Id, IsDeleted, SystemModstamp, AnnualRevenue FROM Account")
    rendered = [soql.csv_expr(f).as_string(None) for f in acct.fields]
    assert rendered[0] == '"Id"'
    assert rendered[1] == """CASE WHEN "IsDeleted" THEN 'true' WHEN NOT "IsDeleted" THEN 'false' END"""
    assert rendered[2] == """to_char("SystemModstamp" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
    assert rendered[3] == '"AnnualRevenue"::text'
    record = soql.json_record_expr(acct, "59.0").as_string(None)
    assert record.startswith("""'{"attributes":{"type":"Account","url":"/services/data/v59.0/sobjects/Account/' || "Id\"""")
    assert 'HH24:MI:SS.MS"+0000"' in record


# -- rejections -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "SELECT FROM Account", "SELECT Id Account", "SELECT Id FROM", "SELECT Id, FROM Account",
    "SELECT Id FROMM Account", "SELECT Id FROM Account WHERE", "SELECT Id FROM Account WHERE Name = 'x",
    "SELECT Id FROM Account WHERE Name = \"x\"", "SELECT Id FROM Account WHERE a = 1 AND b = 2 OR c = 3",
    "SELECT Id FROM Account LIMIT 1.5", "SELECT Id FROM Account;", "SELECT Id FROM Account WHERE Name <> 'x'",
    "SELECT Id FROM Account ORDER Id", "", "   ",
])
def test_malformed_queries(text: str) -> None:
    assert error_of(text).error_code == "MALFORMED_QUERY"


def test_malformed_error_points_at_the_token() -> None:
    err = error_of("SELECT Id FROMM Account")
    assert err.message == "\nSELECT Id FROMM Account\n          ^\nERROR at Row:1:Column:11\nunexpected token: 'FROMM'"


def test_unknown_field_and_object() -> None:
    err = error_of("SELECT Id, Bogus__c FROM Account")
    assert err.error_code == "INVALID_FIELD" and err.status == 400
    assert "No such column 'Bogus__c' on entity 'Account'" in err.message and "Row:1:Column:12" in err.message
    err = error_of("SELECT Id FROM Account WHERE Nope = 1")
    assert err.error_code == "INVALID_FIELD" and "'Nope'" in err.message
    err = error_of("SELECT Id FROM Acount")
    assert err.error_code == "INVALID_TYPE" and "sObject type 'Acount' is not supported" in err.message
    err = error_of("SELECT Owner.Name FROM Account")
    assert err.error_code == "INVALID_FIELD" and "relationship 'Owner'" in err.message


@pytest.mark.parametrize(("text", "needle"), [
    ("SELECT Id FROM Account WHERE AnnualRevenue = '5'", "must be of type double and should not be enclosed"),
    ("SELECT Id FROM Account WHERE Name = 5", "must be of type string and should be enclosed in quotes"),
    ("SELECT Id FROM Account WHERE SystemModstamp > 2026-01-01", "must be of type dateTime"),
    ("SELECT Id FROM Opportunity WHERE CloseDate > 2026-01-01T00:00:00Z", "must be of type date"),
    ("SELECT Id FROM Account WHERE IsDeleted = 'false'", "must be of type boolean"),
    ("SELECT Id FROM Account WHERE IsDeleted < true", "invalid operator on boolean field"),
    ("SELECT Id FROM Account WHERE AnnualRevenue LIKE '5%'", "invalid operator on currency field"),
    ("SELECT Id FROM AccountHistory WHERE NewValue = 'x'", "can not be filtered"),
    ("SELECT Id FROM AccountHistory ORDER BY OldValue", "can not be sorted"),
])
def test_type_and_capability_errors(text: str, needle: str) -> None:
    err = error_of(text)
    assert err.error_code == "INVALID_FIELD" and needle in err.message


def test_other_limits() -> None:
    assert error_of("SELECT Id, id FROM Account").message == "duplicate field selected: Id"
    assert error_of("SELECT Id FROM Account OFFSET 2001").error_code == "NUMBER_OUTSIDE_VALID_RANGE"
    assert error_of("SELECT COUNT() FROM Account", bulk=True).error_code == "INVALIDJOB"
    assert error_of("SELECT Id FROM Account OFFSET 5", bulk=True).error_code == "INVALIDJOB"
    assert error_of("SELECT Id FROM Opportunity WHERE CloseDate = 2026-13-45").error_code == "MALFORMED_QUERY"


# -- properties -------------------------------------------------------------------------------------

def soql_quote(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f"'{out}'"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_string_literals_round_trip_and_never_reach_the_sql_text(value: str) -> None:
    text, params = where_of(f"SELECT Id FROM Account WHERE Name = {soql_quote(value)}")
    assert params == [value]
    assert text == ' WHERE lower("Name") = lower(%s)'


_fields = st.sampled_from([("Name", "'x'"), ("AnnualRevenue", "10.5"), ("IsDeleted", "true"),
                           ("SystemModstamp", "2026-01-01T00:00:00Z"), ("Id", "'001000000000000'"),
                           ("Industry", "null")])
_ops = st.sampled_from(["=", "!="])


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> tuple[str, int]:
    """A random condition and the number of non-null literals it binds."""
    if depth >= 2 or draw(st.booleans()):
        name, lit = draw(_fields)
        return f"{name} {draw(_ops)} {lit}", 0 if lit == "null" else 1
    kids = [draw(conditions(depth + 1)) for _ in range(draw(st.integers(2, 3)))]
    joiner = draw(st.sampled_from([" AND ", " OR "]))
    text = "(" + joiner.join(k[0] for k in kids) + ")"
    if draw(st.booleans()):
        text = "NOT " + text
    return text, sum(k[1] for k in kids)


@settings(max_examples=150, deadline=None)
@given(conditions())
def test_random_conditions_translate_with_one_parameter_per_literal(cond: tuple[str, int]) -> None:
    text, n = cond
    sql_text, params = where_of(f"SELECT Id FROM Account WHERE {text}")
    assert len(params) == n and sql_text.count("%s") == n
    assert sql_text.count("(") == sql_text.count(")")
