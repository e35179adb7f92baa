"""The change poll's pure parts: the id rule on what Salesforce returns, the merge of the two lists,
minute truncation and refused inputs (the calls themselves: tests/integration/test_sf_changes.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine.connectors.salesforce.changes import _ids, floor_minute, merge, poll_changes
from engine.connectors.salesforce.client import SalesforceError
from engine.core.errors import Exit, UsageError


def test_ids_get_their_18_character_form_and_a_malformed_one_stops_the_poll() -> None:
    assert _ids(["003RO0000035WQg", "003RO0000035WQgYAM"], "Contact", "updated") == ["003RO0000035WQgYAM"] * 2
    with pytest.raises(SalesforceError) as exc:
        _ids(["003RO0000035WQgYAM", "003RO0000035WQgAAA"], "Contact", "deleted")  # wrong case suffix
    assert "003RO0000035WQgAAA" in str(exc.value) and exc.value.exit_code == Exit.USAGE
    with pytest.raises(SalesforceError):
        _ids([None], "Contact", "deleted")


def test_an_id_both_updated_and_deleted_is_re_read_not_dropped() -> None:
    up, gone = merge(["b", "a", "b", "c"], ["c", "d", "d"])
    assert up == ("a", "b", "c") and gone == ("d",)


def test_floor_minute_drops_seconds_in_utc() -> None:
    t = datetime(2031, 5, 4, 14, 0, 59, 999_000, tzinfo=timezone(timedelta(hours=2)))
    assert floor_minute(t) == datetime(2031, 5, 4, 12, 0, tzinfo=UTC)
    assert floor_minute(datetime(2031, 5, 4, 12, 0, 30)) == datetime(2031, 5, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("sobject", "overlap"), [("Account/../query", timedelta(0)), ("Account", timedelta(-1))])
def test_a_bad_sobject_or_a_negative_overlap_is_refused_before_any_call(sobject: str, overlap: timedelta) -> None:
    with pytest.raises(UsageError):
        poll_changes(None, sobject, datetime.now(UTC), overlap=overlap)
