"""A field the integration user cannot see (issue 21). In a real org, describe omits every field
the user's profile cannot read, so a mapped field "disappears" and looked like a typo ("unknown
column … fix the key/column option"). The local API hides a field from a user as field-level
security does; recon's message must name that user and the likely cause."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from simple_salesforce.exceptions import SalesforceMalformedRequest

from engine.local.salesforce import USER_ID
from tests.salesforce_fixtures import SalesforceStack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hidden_revenue(sf_stack: SalesforceStack) -> Iterator[str]:
    """AnnualRevenue hidden from the integration user, shown again afterwards (the org is shared)."""
    sf_stack.control("POST", "fls", {"sobject": "Account", "hidden": ["AnnualRevenue"]})
    try:
        yield "AnnualRevenue"  # spelled out in the SOQL of the tests
    finally:
        sf_stack.control("POST", "fls", {"sobject": "Account", "hidden": []})


def test_the_local_api_hides_a_field_from_a_user_as_field_level_security_does(
        sf_stack: SalesforceStack, hidden_revenue: str) -> None:
    conn = sf_stack.connect()
    names = {f["name"] for f in conn.sf.Account.describe()["fields"]}
    assert hidden_revenue not in names and "Name" in names
    with pytest.raises(SalesforceMalformedRequest, match="INVALID_FIELD"):
        conn.sf.query("SELECT Id, AnnualRevenue FROM Account LIMIT 1")
    with pytest.raises(SalesforceMalformedRequest, match="INVALID_FIELD"):  # in a condition too
        conn.sf.query("SELECT Id FROM Account WHERE AnnualRevenue > 0 LIMIT 1")
    # hidden from another user only: the integration user sees it again
    other = "005000000000000AAA"
    sf_stack.control("POST", "fls", {"sobject": "Account", "hidden": []})
    sf_stack.control("POST", "fls", {"sobject": "Account", "hidden": [hidden_revenue], "user": other})
    try:
        assert hidden_revenue in {f["name"] for f in conn.sf.Account.describe()["fields"]}
        conn.sf.query("SELECT Id, AnnualRevenue FROM Account LIMIT 1")
    finally:
        sf_stack.control("POST", "fls", {"sobject": "Account", "hidden": [], "user": other})


def test_a_field_missing_from_describe_names_field_level_security_and_the_user(
        sf_stack: SalesforceStack, hidden_revenue: str, tmp_path: Path) -> None:
    other = tmp_path / "accounts.parquet"
    pl.DataFrame({"Id": ["0015g0000000001AAA"], "AnnualRevenue": ["1.00"]}).write_parquet(other)
    c = sf_stack.credentials
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "RECON_"))}
    env.update(PYTHONPATH=str(ROOT), SF_LOGIN_URL=sf_stack.login_url, SF_CA_BUNDLE=sf_stack.ca_bundle,
               SF_USERNAME=c["salesforce_username"], SF_PASSWORD=c["salesforce_password"],
               SF_SECURITY_TOKEN=c["salesforce_security_token"])
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "diff", "salesforce:Account", f"parquet:{other}",
                          "-k", "Id", "-c", hidden_revenue], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    line = lines[0]
    assert line.startswith(f"recon: error: unknown column '{hidden_revenue}' in salesforce:Account "), line
    assert "field-level security" in line, line
    assert f"integration user {c['salesforce_username']} ({USER_ID})" in line, line
    assert c["salesforce_password"] not in res.stderr
