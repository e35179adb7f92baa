"""What recon puts into SOQL from data (issue 16.4): record ids pass only the Salesforce id rule, a
``--source-where`` only as one SOQL condition over the describe's fields, and explain asks
Salesforce only about keys the diff read from Salesforce."""

from __future__ import annotations

import polars as pl
import pytest

from engine.app.explain import salesforce_keys
from engine.connectors.salesforce.soql import check_condition, check_ids, id_list
from engine.core.errors import Exit, UsageError
from engine.core.sfid import make_ids, to18

HOSTILE_ID = "x') OR Id != null OR Id IN ('y"
IDS = make_ids("001", 0, 3)

FIELDS = [{"name": n} for n in ("Id", "Name", "Industry", "AnnualRevenue", "CreatedDate", "CloseDate",
                                 "IsDeleted", "Tags__c", "Customer_Lifetime_Value__c")]
FIELDS += [{"name": "OwnerId", "relationshipName": "Owner"}, {"name": "Description", "filterable": False}]


def _usage(fn, *args):  # noqa: ANN001, ANN002, ANN202
    with pytest.raises(UsageError) as exc:
        fn(*args)
    assert exc.value.exit_code == Exit.USAGE
    assert "\n" not in str(exc.value)
    return str(exc.value)


# -- the id rule ------------------------------------------------------------------------------------

def test_ids_of_15_and_18_characters_pass_sorted_and_distinct() -> None:
    id15 = "003RO0000035WQg"
    assert check_ids([IDS[2], IDS[0], IDS[0], id15, to18(id15)]) == sorted({IDS[0], IDS[2], id15, to18(id15)})
    assert check_ids([]) == []


@pytest.mark.parametrize("bad", [
    HOSTILE_ID,
    "001000000000000') OR Id != null OR Id IN ('001000000000000",
    "001' OR Name != '",
    IDS[0][:17] + ("A" if IDS[0][17] != "A" else "B"),  # 18 characters, wrong case suffix
    IDS[0][:16],  # 16 characters
    IDS[0][:14],
    "0015g000000000'",  # 15 characters, a quote
    "0015g00000000\\'",
    "0015g0000000 00",
    "ééééééééé",  # 18 bytes of UTF-8
    "",
])
def test_anything_else_is_refused_naming_the_value(bad: str) -> None:
    msg = _usage(check_ids, [IDS[0], bad])
    assert repr(bad) in msg and "not a Salesforce record id" in msg


def test_the_in_list_holds_only_checked_ids() -> None:
    assert id_list([IDS[1], IDS[0]]) == f"'{IDS[0]}', '{IDS[1]}'"
    _usage(id_list, [HOSTILE_ID])


def test_explain_never_asks_salesforce_about_warehouse_only_keys() -> None:
    diffs = pl.DataFrame({
        "key": [IDS[0], IDS[1], IDS[2], HOSTILE_ID, "not-an-id"],
        "kind": ["mismatched", "missing_in_target", "duplicate_key", "missing_in_source", "missing_in_source"],
    })
    assert salesforce_keys(diffs) == IDS


# -- conditions -------------------------------------------------------------------------------------

LEGAL = [
    ("Industry = 'Banking' AND (AnnualRevenue > 1000 OR Name LIKE 'A%')",
     "Industry = 'Banking' AND (AnnualRevenue > 1000 OR Name LIKE 'A%')"),
    ("industry = 'Banking'", "Industry = 'Banking'"),  # names take the describe's spelling
    ("CreatedDate >= 2024-01-01T00:00:00Z and CreatedDate < 2024-02-01T00:00:00.000+01:00",
     "CreatedDate >= 2024-01-01T00:00:00Z AND CreatedDate < 2024-02-01T00:00:00.000+01:00"),
    ("CloseDate = 2024-03-31", "CloseDate = 2024-03-31"),
    ("CreatedDate = LAST_N_DAYS:30", "CreatedDate = LAST_N_DAYS:30"),
    ("CreatedDate < today", "CreatedDate < TODAY"),
    ("CALENDAR_YEAR(CreatedDate) = 2024", "CALENDAR_YEAR(CreatedDate) = 2024"),
    ("HOUR_IN_DAY(convertTimezone(CreatedDate)) > 9", "HOUR_IN_DAY(convertTimezone(CreatedDate)) > 9"),
    ("Industry IN ('Banking','Energy')", "Industry IN ('Banking', 'Energy')"),
    ("Industry NOT IN ('Banking')", "Industry NOT IN ('Banking')"),
    ("Id IN ('001000000000001', '001000000000001AAA')", "Id IN ('001000000000001', '001000000000001AAA')"),
    ("NOT Industry = 'Banking'", "NOT Industry = 'Banking'"),
    ("NOT (Industry = 'Banking' OR IsDeleted = true)", "NOT (Industry = 'Banking' OR IsDeleted = TRUE)"),
    ("Industry = null", "Industry = NULL"),
    ("Industry != null AND Name != 'x'", "Industry != NULL AND Name != 'x'"),
    ("AnnualRevenue >= -10.5", "AnnualRevenue >= -10.5"),
    ("Customer_Lifetime_Value__c <= 1000.00", "Customer_Lifetime_Value__c <= 1000.00"),
    ("Name = 'O\\'Brien'", "Name = 'O\\'Brien'"),  # an escaped quote stays inside the string
    ("Name LIKE 'a\\%b\\_c'", "Name LIKE 'a\\%b\\_c'"),
    ("Name = 'LIMIT 1; SELECT Id FROM User'", "Name = 'LIMIT 1; SELECT Id FROM User'"),
    ("Tags__c INCLUDES ('a;b', 'c')", "Tags__c INCLUDES ('a;b', 'c')"),
    ("Tags__c EXCLUDES ('a')", "Tags__c EXCLUDES ('a')"),
    ("Owner.IsActive = true", "Owner.IsActive = TRUE"),
    ("  ((Name = 'a'))  ", "((Name = 'a'))"),
]


@pytest.mark.parametrize(("text", "sent"), LEGAL)
def test_legal_conditions_are_sent_as_parsed(text: str, sent: str) -> None:
    assert check_condition(text, "Account", FIELDS) == sent


HOSTILE = [
    HOSTILE_ID,
    "Name = 'a') OR (Id != null",
    "Name = 'a' LIMIT 1",
    "Name = 'a' ORDER BY Name",
    "Name = 'a' OFFSET 10",
    "Name = 'a' GROUP BY Name",
    "Name = 'a' FOR UPDATE",
    "Name = 'a' ALL ROWS",
    "Name = 'a'; SELECT Id FROM User",
    "Name = 'a' FROM User",
    "Id IN (SELECT Id FROM User)",
    "Name = 'a' UNION SELECT Id FROM User",
    "Name = 'a' AND Industry = 'b' OR Id != null",  # AND and OR mixed without parentheses
    "Name = 'a' --",
    "Name = 'a' /* */",
    "Name = 'a",
    "Name = 'a\\'",  # the escaped quote leaves the string open
    "Name = 'a\\x'",  # not a SOQL escape
    "Name = \"a\"",
    "Name = Industry",  # a field is not a value
    "Name",
    "(Name = 'a'",
    "Name = 'a')",
    "Name LIKE 1",
    "Name IN ()",
    "AnnualRevenue > 1 + 1",
    "Id != null OR",
    "NOT",
    "TRUE",
    "1 = 1",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_conditions_are_refused_in_one_line_naming_them(text: str) -> None:
    msg = _usage(check_condition, text, "Account", FIELDS)
    assert repr(text)[:60] in msg or repr(text[:80] + "…") in msg
    assert "not one SOQL condition" in msg


@pytest.mark.parametrize(("text", "named"), [
    ("Foo__c = 1", "'Foo__c', which is not a field of Account"),
    ("NAME = 'a' AND Secret__c != null", "'Secret__c', which is not a field of Account"),
    ("Boss.Name = 'x'", "'Boss' is not a relationship of Account"),
    ("CALENDAR_YEAR(Nope__c) = 2024", "'Nope__c', which is not a field"),
    ("Description = 'x'", "'Description', which Account does not allow"),
])
def test_fields_must_be_in_describe(text: str, named: str) -> None:
    assert named in _usage(check_condition, text, "Account", FIELDS)


def test_an_empty_condition_is_refused() -> None:
    assert "empty" in _usage(check_condition, "  ", "Account", FIELDS)


def test_errors_say_which_setting() -> None:
    with pytest.raises(UsageError) as exc:
        check_condition("Name = 'a' LIMIT 1", "Account", FIELDS)
    assert exc.value.field == "where"
