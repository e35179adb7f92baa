"""[mapping.NAME.roles]: typed, validated, with [commission] fallbacks (roles win)."""

from __future__ import annotations

import pytest

from engine import config as cfgmod
from engine.core.errors import UsageError

MAPPING = '[mapping.m]\nsource = "salesforce:Account"\ntarget = "parquet:t.parquet"\nkey = ["Id"]\n'


def _load(tmp_path, text):
    p = tmp_path / "recon.toml"
    p.write_text(text)
    return cfgmod.load(p)


def test_defaults(tmp_path):
    r = _load(tmp_path, MAPPING).mapping("m").roles
    assert r == cfgmod.Roles(amount=None, owner="OwnerId", commission_rate="Commission_Rate__c",
                             rank_by="AnnualRevenue", modstamp="SystemModstamp")


def test_roles_win_over_commission_fallbacks(tmp_path):
    text = ('[commission]\nowner_field = "Rep__c"\nrate_field = "Rate__c"\nrevenue_field = "Rev__c"\n'
            + MAPPING + '[mapping.m.roles]\namount = "LTV__c"\nowner = "Seller__c"\nmodstamp = "LastModifiedDate"\n')
    c = _load(tmp_path, text)
    assert c.mapping("m").roles == cfgmod.Roles(amount="LTV__c", owner="Seller__c", commission_rate="Rate__c",
                                                 rank_by="Rev__c", modstamp="LastModifiedDate")
    # a diff without a mapping (or one this config does not declare) gets the [commission] fallbacks
    assert c.roles(None).owner == "Rep__c" and c.roles("other").rank_by == "Rev__c"


def test_unknown_role_refused(tmp_path):
    c = _load(tmp_path, MAPPING + '[mapping.m.roles]\namout = "X"\n')
    with pytest.raises(UsageError, match=r"recon.toml: \[mapping.m.roles\]: unknown key\(s\) amout \(known: amount"):
        c.mapping("m")


@pytest.mark.parametrize("value", ['"1st"', '"Owner Id"', '"a-b"', "3", '""', '"' + "x" * 81 + '"'])
def test_invalid_field_names(tmp_path, value):
    c = _load(tmp_path, MAPPING + f"[mapping.m.roles]\nowner = {value}\n")
    with pytest.raises(UsageError, match=r"recon.toml: \[mapping.m.roles\] owner = .* is not a Salesforce field name"):
        c.mapping("m")


def test_invalid_commission_fallback_names_the_commission_key(tmp_path):
    c = _load(tmp_path, '[commission]\nrevenue_field = "Annual Revenue"\n' + MAPPING)
    with pytest.raises(UsageError, match=r"\[commission\] revenue_field = 'Annual Revenue' is not a Salesforce"):
        c.mapping("m")


def test_roles_must_be_a_table(tmp_path):
    c = _load(tmp_path, MAPPING.replace('key = ["Id"]\n', 'key = ["Id"]\nroles = "amount"\n'))
    with pytest.raises(UsageError, match=r"\[mapping.m.roles\] must be a table"):
        c.mapping("m")


def test_gate_takes_the_amount_role_when_its_entry_names_no_column(tmp_path):
    from engine.app import gate

    c = _load(tmp_path, '[gate]\nm = { variance_ratio = 0.01 }\nn = { column = "Other__c" }\n' + MAPPING
              + '[mapping.m.roles]\namount = "LTV__c"\n'
              + MAPPING.replace("mapping.m", "mapping.n") + '[mapping.n.roles]\namount = "LTV__c"\n')
    assert gate.thresholds_for(c, "m").column == "LTV__c"
    assert gate.thresholds_for(c, "n").column == "Other__c"  # the gate's own column wins


def test_explain_reads_the_role_fields_under_neutral_names():
    import polars as pl

    from engine.app.explain import _by_role
    from engine.core import forensics

    extracted = pl.DataFrame({"Id": ["a"], "Seller__c": ["o"], "RATE__C": ["0.1"], "Rev__c": ["9"],
                              "LastModifiedDate": ["t"], "LTV__c": ["1.00"]})
    got = _by_role(extracted, {"owner": "Seller__c", "commission_rate": "Rate__c", "rank_by": "Rev__c",
                               "modstamp": "LastModifiedDate", "amount": "LTV__c"})
    assert tuple(got.columns) == forensics.ATTRIBUTES
    assert got.row(0) == ("a", "o", "0.1", "9", "t", "1.00")
