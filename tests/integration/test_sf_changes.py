"""Change polling against the local org through the unmodified simple-salesforce client: getUpdated
and getDeleted with Salesforce's rules (minute granularity, latestDateCovered, the 30-day window,
the id cap), queryAll vs query on IsDeleted, and recon's client for them
(:func:`engine.connectors.salesforce.changes.poll_changes`).

Time is the org's clock, moved through the control API (`/__recon/clock`): a minute passes in one
call and the 30-day window is crossed in one more, so no test sleeps. Each test starts from an
empty org whose clock reads 12:00:10 on a fixed day; the teardown empties the org and sets the
clock back, so the other modules sharing the session's org see neither.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from engine.connectors.salesforce.changes import Changes, FullPullNeeded, org_time, poll_changes
from engine.local.sfapi.store import store_dsn
from tests.salesforce_fixtures import SalesforceStack

T0 = datetime(2031, 5, 4, 12, 0, 10, tzinfo=UTC)  # the org's clock at the start of every test
MINUTE = timedelta(minutes=1)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class Org:
    """The test's org: a connection, its Accounts and the clock."""

    def __init__(self, stack: SalesforceStack) -> None:
        self.stack = stack
        self.conn = stack.connect()
        self.sf: Salesforce = self.conn.sf
        self.ids: list[str] = []

    def clock(self, **change: Any) -> datetime:
        """Move (or read) the org's clock; returns the org's time now."""
        out = self.stack.control("POST", "clock", change)
        return datetime.fromisoformat(out["now"].replace("+0000", "+00:00"))

    def advance(self, seconds: float = 60) -> datetime:
        return self.clock(advance_seconds=seconds)

    def create(self, n: int) -> list[str]:
        new = [self.sf.Account.create({"Name": f"Changed {len(self.ids) + i}"})["id"] for i in range(n)]
        self.ids += new
        return new


@pytest.fixture
def org(sf_stack: SalesforceStack) -> Iterator[Org]:
    sf_stack.reset_store()
    sf_stack.clear_failures()
    o = Org(sf_stack)
    assert o.clock(now=T0.isoformat()) - T0 < timedelta(seconds=30)
    try:
        yield o
    finally:
        o.conn.close()
        sf_stack.reset_store()  # the clock and the id cap too


# -- the local API, through simple-salesforce -------------------------------------------------------

def test_changes_show_once_their_minute_is_over_and_seconds_are_ignored(org: Org) -> None:
    """Changes at 12:00:1x are listed by no call until the org's clock passes 12:01; then a start
    of 12:00:30 still lists them (its seconds are ignored), and an end of 12:00:59 does not (nor
    are its seconds)."""
    created = org.create(3)
    org.sf.Account.update(created[0], {"Name": "changed again"})
    early = org.sf.Account.updated(T0 - MINUTE, T0 + timedelta(hours=1))
    assert early == {"ids": [], "latestDateCovered": "2031-05-04T12:00:00.000+0000"}
    now = org.advance(60)
    assert now >= T0 + MINUTE
    later = org.sf.Account.updated(T0.replace(second=30), T0 + timedelta(hours=1))
    assert later["ids"] == sorted(created) and all(len(i) == 18 for i in later["ids"])
    covered = datetime.fromisoformat(later["latestDateCovered"].replace("+0000", "+00:00"))
    assert covered == now.replace(second=0, microsecond=0) == T0.replace(second=0) + MINUTE
    cut = org.sf.Account.updated(T0 - MINUTE, T0.replace(second=59))
    assert cut == {"ids": [], "latestDateCovered": "2031-05-04T12:00:00.000+0000"}
    # chained on latestDateCovered: the next window starts where this one stopped, nothing twice
    assert org.sf.Account.updated(covered, covered + timedelta(hours=1))["ids"] == []


def test_deletions_carry_their_deleted_date_and_query_all_shows_is_deleted(org: Org) -> None:
    keep, gone = org.create(2)
    assert org.sf.Account.delete(gone) == 204
    org.advance(60)
    body = org.sf.Account.deleted(T0 - MINUTE, T0 + timedelta(hours=1))
    row = org.sf.query_all(f"SELECT Id, IsDeleted, SystemModstamp FROM Account WHERE Id = '{gone}'",  # noqa: S608
                           include_deleted=True)["records"]
    assert [r["IsDeleted"] for r in row] == [True]
    assert body["deletedRecords"] == [{"id": gone, "deletedDate": row[0]["SystemModstamp"]}]
    assert body["latestDateCovered"] == "2031-05-04T12:01:00.000+0000"
    assert body["earliestDateAvailable"] <= body["latestDateCovered"]
    assert org.sf.Account.updated(T0 - MINUTE, T0 + timedelta(hours=1))["ids"] == [keep]
    q = "SELECT Id FROM Account WHERE IsDeleted = true"
    assert [r["Id"] for r in org.sf.query_all(q, include_deleted=True)["records"]] == [gone]
    assert org.sf.query(q)["records"] == []
    assert [r["Id"] for r in org.sf.query("SELECT Id FROM Account")["records"]] == [keep]


def test_a_hard_delete_leaves_no_trace_in_either_list(org: Org) -> None:
    a, b = org.create(2)
    assert org.stack.control("POST", "hard_delete", {"sobject": "Account", "ids": [a]}) == {"deleted": 1}
    org.advance(60)
    assert org.sf.Account.updated(T0 - MINUTE, T0 + timedelta(hours=1))["ids"] == [b]
    assert org.sf.Account.deleted(T0 - MINUTE, T0 + timedelta(hours=1))["deletedRecords"] == []
    assert org.sf.query_all("SELECT Id FROM Account", include_deleted=True)["totalSize"] == 1


def _refusal(call: Any) -> tuple[int, str]:
    with pytest.raises(SalesforceMalformedRequest) as exc:
        call()
    return exc.value.status, exc.value.content[0]["errorCode"]


def test_the_30_day_window_and_a_reversed_window_are_invalid_replication_dates(org: Org) -> None:
    org.create(1)
    now = org.advance(30 * 24 * 3600 + 60)  # 30 days and a minute later, in one call
    assert now - T0 >= timedelta(days=30, minutes=1)
    assert _refusal(lambda: org.sf.Account.updated(T0, now)) == (400, "INVALID_REPLICATION_DATE")
    assert _refusal(lambda: org.sf.Account.deleted(T0, now)) == (400, "INVALID_REPLICATION_DATE")
    inside = (now - timedelta(days=30)).replace(second=0) + MINUTE
    assert org.sf.Account.updated(inside, now)["ids"] == []
    assert _refusal(lambda: org.sf.Account.updated(now, now - 2 * MINUTE)) == (400, "INVALID_REPLICATION_DATE")
    org.stack.control("POST", "replication", {"delete_log_horizon": _iso(inside + MINUTE)})
    assert _refusal(lambda: org.sf.Account.deleted(inside, now)) == (400, "INVALID_REPLICATION_DATE")
    assert org.sf.Account.updated(inside, now)["ids"] == []  # the delete log's horizon is getDeleted's only


def test_more_ids_than_the_cap_is_exceeded_id_limit(org: Org) -> None:
    org.create(3)
    org.advance(60)
    org.stack.control("POST", "replication", {"id_cap": 2})
    assert _refusal(lambda: org.sf.Account.updated(T0 - MINUTE, T0 + MINUTE)) == (400, "EXCEEDED_ID_LIMIT")
    org.stack.control("POST", "replication", {"id_cap": 3})
    assert len(org.sf.Account.updated(T0 - MINUTE, T0 + MINUTE)["ids"]) == 3


def test_latest_date_covered_stays_before_a_write_still_being_committed(org: Org, sf_stack: SalesforceStack) -> None:
    """A record written in a transaction that is still open carries the transaction's start as its
    SystemModstamp; latestDateCovered must stay before it, or the next window (starting there)
    would skip the record once it commits."""
    org.clock(now=(T0 + timedelta(seconds=47)).isoformat())
    rid = sf_stack.allocate_ids("Account", 1)[0]
    with psycopg.connect(store_dsn(sf_stack.pg)) as conn:
        stamp = conn.execute('INSERT INTO "Account" ("Id", "Name") VALUES (%s, %s) RETURNING "SystemModstamp"',
                             (rid, "slow writer")).fetchone()[0]  # type: ignore[index]
        boundary = stamp.replace(second=0, microsecond=0) + MINUTE
        deadline = time.monotonic() + 90
        while org.clock() < boundary:  # the org's minute of the write ends while it is uncommitted
            assert time.monotonic() < deadline, "the org's clock did not pass the minute"
            time.sleep(0.2)
        held = org.sf.Account.updated(boundary - 2 * MINUTE, boundary + timedelta(hours=1))
        assert held == {"ids": [], "latestDateCovered": _iso(boundary - MINUTE)}
        conn.commit()
    after = org.sf.Account.updated(boundary - MINUTE, boundary + timedelta(hours=1))
    assert after["ids"] == [rid] and after["latestDateCovered"] == _iso(boundary)


# -- recon's client ------------------------------------------------------------------------------------

def test_poll_lists_updates_and_deletions_and_returns_latest_date_covered(org: Org) -> None:
    before = org.create(2)  # 12:00
    since = org.advance(60)  # 12:01:1x: a previous run's watermark
    changed = org.create(1)
    org.sf.Account.update(before[0], {"Name": "moved"})
    org.sf.Account.delete(before[1])
    now = org.advance(120)  # 12:03:1x
    got = poll_changes(org.conn, "Account", since, end=now + timedelta(hours=1))
    assert isinstance(got, Changes)
    assert got.updated == tuple(sorted([changed[0], before[0]])) and got.deleted == (before[1],)
    assert got.start == since.replace(second=0, microsecond=0) - MINUTE  # the overlap, whole minutes
    assert got.watermark == now.replace(second=0, microsecond=0) and got.calls == 2
    org.advance(60)
    nothing = poll_changes(org.conn, "Account", got.watermark, overlap=timedelta(0))  # up to the org's time
    assert isinstance(nothing, Changes) and (nothing.updated, nothing.deleted) == ((), ())
    assert nothing.watermark == got.watermark + MINUTE and nothing.calls == 2


def test_the_org_clock_is_the_date_header(org: Org) -> None:
    """The poll's default end is the org's time, read from the Date header of the versions list."""
    now = org.advance(7 * 24 * 3600)
    told = org_time(org.conn)
    assert abs((told - now).total_seconds()) < 5


def test_the_overlap_reports_a_change_just_before_the_watermark(org: Org) -> None:
    early = org.create(1)
    since = org.advance(60)  # the change is in the minute before the watermark
    now = org.advance(60)
    with_overlap = poll_changes(org.conn, "Account", since, end=now)
    without = poll_changes(org.conn, "Account", since, end=now, overlap=timedelta(0))
    assert isinstance(with_overlap, Changes) and isinstance(without, Changes)
    assert with_overlap.updated == tuple(early) and without.updated == ()


def test_past_the_30_day_window_the_poll_says_a_full_pull_is_needed(org: Org) -> None:
    org.create(1)
    since = org.advance(60)
    org.advance(31 * 24 * 3600)
    got = poll_changes(org.conn, "Account", since)  # the window ends at the org's clock (its Date header)
    assert isinstance(got, FullPullNeeded)
    assert got.code == "INVALID_REPLICATION_DATE" and got.since == since and "full read" in got.reason


def test_over_the_id_cap_the_window_is_split_in_minutes(org: Org) -> None:
    """Three changes in three minutes under a cap of two: the poll halves its window until each
    part fits, and still lists all three; three changes in one minute cannot be split."""
    since = org.clock()
    ids = []
    for _ in range(3):
        ids += org.create(1)
        now = org.advance(60)
    org.stack.control("POST", "replication", {"id_cap": 2})
    got = poll_changes(org.conn, "Account", since, end=now, overlap=timedelta(0))
    assert isinstance(got, Changes)
    assert got.updated == tuple(sorted(ids)) and got.watermark == now.replace(second=0, microsecond=0)
    assert got.calls > 2
    org.create(3)
    later = org.advance(60)
    full = poll_changes(org.conn, "Account", got.watermark, end=later, overlap=timedelta(0))
    assert isinstance(full, FullPullNeeded) and full.code == "EXCEEDED_ID_LIMIT"

