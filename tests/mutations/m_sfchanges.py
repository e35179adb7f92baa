"""Issue 19, change polling: getUpdated/getDeleted in the local Salesforce API (minute granularity,
latestDateCovered, the 30-day window, the id cap, deletedDate, the org's clock), query vs queryAll on
IsDeleted, and recon's client for them (full pull, window splitting, watermark, overlap, ids). Each
mutation breaks one rule that tests/integration/test_sf_changes.py or tests/unit/test_sf_changes.py
asserts."""

from __future__ import annotations

from tests.mutations import Mutation

_IT = "tests/integration/test_sf_changes.py::"
_UT = "tests/unit/test_sf_changes.py::"
_STORE = "engine/local/sfapi/store.py"
_CLIENT = "engine/connectors/salesforce/changes.py"

MUTATIONS = [
    # -- the local API -------------------------------------------------------------------------------
    Mutation("start-seconds-kept", _STORE,
             "start, end = _minute(start), _minute(end)", "end = _minute(end)",
             (_IT + "test_changes_show_once_their_minute_is_over_and_seconds_are_ignored",),
             "getUpdated's start keeps its seconds (Salesforce ignores them)"),
    Mutation("covered-past-the-clock", _STORE,
             "for x in (end, now, oldest_open) if x is not None", "for x in (end, oldest_open) if x is not None",
             (_IT + "test_changes_show_once_their_minute_is_over_and_seconds_are_ignored",),
             "latestDateCovered follows end past the org's clock (the current minute is listed unfinished)"),
    Mutation("covered-past-open-transactions", _STORE,
             "for x in (end, now, oldest_open) if x is not None", "for x in (end, now) if x is not None",
             (_IT + "test_latest_date_covered_stays_before_a_write_still_being_committed",),
             "latestDateCovered passes a write still being committed, which the next window then skips"),
    Mutation("no-30-day-window", _STORE,
             "if start < now - REPLICATION_WINDOW:", "if False:",
             (_IT + "test_the_30_day_window_and_a_reversed_window_are_invalid_replication_dates",
              _IT + "test_past_the_30_day_window_the_poll_says_a_full_pull_is_needed"),
             "a start older than 30 days is answered instead of INVALID_REPLICATION_DATE"),
    Mutation("no-delete-log-horizon", _STORE,
             "if deleted and start < horizon:", "if False:",
             (_IT + "test_the_30_day_window_and_a_reversed_window_are_invalid_replication_dates",),
             "getDeleted answers for a start before earliestDateAvailable"),
    Mutation("no-id-cap", _STORE,
             "if len(rows) > cap:", "if False:",
             (_IT + "test_more_ids_than_the_cap_is_exceeded_id_limit",),
             "more ids than the cap are returned instead of EXCEEDED_ID_LIMIT"),
    Mutation("deleted-date-is-the-cover", _STORE,
             '"deletedDate": _iso(r[1])', '"deletedDate": _iso(covered)',
             (_IT + "test_deletions_carry_their_deleted_date_and_query_all_shows_is_deleted",),
             "a deletion's deletedDate is not the time it was deleted"),
    Mutation("updated-lists-deleted", _STORE,
             'sql.SQL("" if deleted else "NOT")', 'sql.SQL("")',
             (_IT + "test_deletions_carry_their_deleted_date_and_query_all_shows_is_deleted",),
             "getUpdated lists records in the Recycle Bin"),
    Mutation("query-shows-deleted", "engine/local/sfapi/soql.py",
             """parts.append(sql.SQL('"IsDeleted" = false'))""", "pass",
             (_IT + "test_deletions_carry_their_deleted_date_and_query_all_shows_is_deleted",),
             "query (not queryAll) returns deleted rows"),
    Mutation("writes-ignore-the-org-clock", _STORE,
             """ORG_NOW = f"date_trunc('milliseconds', {INTERNAL}.org_now())\"""",
             """ORG_NOW = "date_trunc('milliseconds', now())\"""",
             (_IT + "test_changes_show_once_their_minute_is_over_and_seconds_are_ignored",),
             "SystemModstamp of new writes is real time, not the org's clock the control API set"),
    # -- recon's client ----------------------------------------------------------------------------
    Mutation("replication-refusal-raises", _CLIENT,
             "if code in REPLICATION_CODES:", "if False:",
             (_IT + "test_past_the_30_day_window_the_poll_says_a_full_pull_is_needed",),
             "INVALID_REPLICATION_DATE is an error instead of a 'full pull needed' result"),
    Mutation("no-window-split", _CLIENT,
             'if body.code == "EXCEEDED_ID_LIMIT" and e - cur > GRANULE:', "if False:",
             (_IT + "test_over_the_id_cap_the_window_is_split_in_minutes",),
             "EXCEEDED_ID_LIMIT over several minutes gives up instead of splitting the window"),
    Mutation("watermark-is-the-end-asked", _CLIENT,
             "max(since, min(covered))", "max(since, stop)",
             (_IT + "test_poll_lists_updates_and_deletions_and_returns_latest_date_covered",),
             "the next watermark is the end asked for, not latestDateCovered"),
    Mutation("no-overlap", _CLIENT,
             "start = floor_minute(since - overlap)", "start = floor_minute(since)",
             (_IT + "test_the_overlap_reports_a_change_just_before_the_watermark",),
             "the poll starts at the watermark, without the overlap"),
    Mutation("deletions-dropped", _CLIENT,
             "return tuple(up), tuple(sorted(set(deleted) - set(up)))", "return tuple(up), ()",
             (_IT + "test_poll_lists_updates_and_deletions_and_returns_latest_date_covered",
              _UT + "test_an_id_both_updated_and_deleted_is_re_read_not_dropped"),
             "the poll loses getDeleted's ids"),
    Mutation("updated-and-deleted-id-dropped", _CLIENT,
             "up = sorted(set(updated))", "up = sorted(set(updated) - set(deleted))",
             (_UT + "test_an_id_both_updated_and_deleted_is_re_read_not_dropped",),
             "an id reported both updated and deleted is not re-read"),
    Mutation("ids-not-checked", _CLIENT,
             "    if not ok.all():\n", "    if False:\n",
             (_UT + "test_ids_get_their_18_character_form_and_a_malformed_one_stops_the_poll",),
             "a malformed id from Salesforce passes into the change lists"),
]
