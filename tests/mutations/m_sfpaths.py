"""Issue 22, "Paths that never run", items 1, 2 and 4: Bulk Id-range chunking, `--as-of` on the
warehouse side, and re-extraction in Id-list chunks. Each mutation breaks one behaviour the tests in
tests/integration/test_sf_paths.py, test_as_of_warehouse.py and tests/unit/test_sf_settings.py
assert."""

from __future__ import annotations

from tests.mutations import Mutation

_SF = "tests/integration/test_sf_paths.py::"
_ASOF = "tests/integration/test_as_of_warehouse.py::"
_DENSE = _SF + "test_id_range_chunks_read_every_row_once[dense-40]"

MUTATIONS = [
    # -- item 1: Id-range chunking ---------------------------------------------------------------
    Mutation("chunking-disabled", "engine/connectors/salesforce/source.py",
             "chunks = max(1, -(-total // chunk_size))", "chunks = 1",
             (_DENSE,), "a large extraction is one Bulk job, never split into Id ranges"),
    Mutation("chunk-threshold-off-by-one", "engine/connectors/salesforce/source.py",
             "chunks = max(1, -(-total // chunk_size))", "chunks = max(1, total // chunk_size + 1)",
             (_SF + "test_chunking_starts_just_above_the_threshold[60-1]",),
             "exactly chunk_rows rows are split in two"),
    Mutation("range-start-exclusive", "engine/connectors/salesforce/source.py",
             """c.append(f"Id >= '{a}'")""", """c.append(f"Id > '{a}'")""",
             (_DENSE,), "a record whose 15-character Id equals a range bound is read by no range"),
    Mutation("id-order-case-blind", "engine/connectors/salesforce/source.py",
             '_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"',
             '_BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"',
             (_DENSE,), "range bounds computed in an alphabet that is not Salesforce's byte order"),
    Mutation("chunk-rows-config-ignored", "engine/connectors/salesforce/source.py",
             'raw = config.section("salesforce").get(key)', "raw = None",
             (_SF + "test_chunking_starts_just_above_the_threshold[59-2]",),
             "[salesforce] chunk_rows / rest_max_rows / id_chunk are not read"),
    Mutation("size-not-validated", "engine/connectors/salesforce/source.py",
             "    if not lo <= n <= hi:\n", "    if False:\n",
             ("tests/unit/test_sf_settings.py::test_a_bad_size_in_the_config_is_exit_2",),
             "a zero, negative or too large size is used as given"),
    Mutation("range-failure-swallowed", "engine/connectors/salesforce/source.py",
             'job = _call(conn, lambda: client.create_job("query", soql, "COMMA", "LF"), "a Bulk API 2.0 query job")',
             'try:\n            job = _call(conn, lambda: client.create_job("query", soql, "COMMA", "LF"), '
             '"a Bulk API 2.0 query job")\n        except Exception:\n            return _parse_pages([], names, types)',
             (_SF + "test_an_id_range_job_that_keeps_failing_fails_the_extraction",),
             "an Id range whose job fails is returned empty (the object silently loses rows)"),
    # -- item 4: re-extraction in Id-list chunks ---------------------------------------------------
    Mutation("reextract-chunk-drops-last-id", "engine/connectors/salesforce/records.py",
             "chunk = ordered[i: i + per_job]", "chunk = ordered[i: i + per_job - 1]",
             (_SF + "test_reextraction_of_more_than_500_ids_runs_one_job_per_500",),
             "each re-extraction chunk loses its last id"),
    Mutation("reextract-chunk-fixed-500", "engine/connectors/salesforce/records.py",
             "per_job = sf_extract.id_chunk(config)", "per_job = 500",
             (_SF + "test_the_id_chunk_is_a_setting",), "the id chunk setting is ignored"),
    Mutation("reextract-failed-chunk-skipped", "engine/connectors/salesforce/records.py",
             'ex = sf_extract.extract(ref, config, list(dict.fromkeys(["Id", column, modstamp])), None, ids=chunk)',
             'try:\n            ex = sf_extract.extract(ref, config, list(dict.fromkeys(["Id", column, modstamp])), '
             'None, ids=chunk)\n        except Exception:\n            continue',
             (_SF + "test_a_chunk_that_keeps_failing_ends_the_reextraction",),
             "a chunk that cannot be read is skipped: repair would act on a partial re-extraction"),
    Mutation("fail-after-ignored", "engine/local/sfapi/app.py",
             "if f.after > 0:  # this one passes", "if False:  # this one passes",
             (_SF + "test_a_chunk_that_keeps_failing_ends_the_reextraction",),
             "the local API's injected failure hits the first chunk instead of the second"),
    # -- item 2: --as-of on the warehouse side -----------------------------------------------------
    Mutation("as-of-naive-through-session-zone", "engine/connectors/postgres/source.py",
             "        return as_of.astimezone(UTC).replace(tzinfo=None)\n", "        return as_of\n",
             (_ASOF + "test_warehouse_rows_changed_after_as_of_are_in_flight[timestamp-America/New_York]",),
             "a naive updated_at is compared in the session's TimeZone, not as UTC"),
    Mutation("as-of-at-T-is-after-T", "engine/connectors/postgres/source.py",
             'q = sql.SQL("SELECT {} FROM {} WHERE {} > %s")', 'q = sql.SQL("SELECT {} FROM {} WHERE {} >= %s")',
             (_ASOF + "test_warehouse_rows_changed_after_as_of_are_in_flight[timestamptz-UTC]",),
             "a warehouse row changed exactly at T counts as in flight"),
    Mutation("as-of-warehouse-side-ignored", "engine/app/reconcile.py",
             "in_flight = _in_flight_keys(es, fields_s, s_opts) | _in_flight_keys(et, fields_t, t_opts)",
             "in_flight = _in_flight_keys(es, fields_s, s_opts)",
             (_ASOF + "test_warehouse_rows_changed_after_as_of_are_in_flight[timestamptz-UTC]",),
             "warehouse rows changed after T are differences"),
    Mutation("mapping-updated-at-dropped", "engine/app/diff.py",
             "target_updated_at=m.target_updated_at, types=m.types", "target_updated_at=None, types=m.types",
             (_ASOF + "test_warehouse_rows_changed_after_as_of_are_in_flight[timestamptz-UTC]",),
             "the mapping's target_updated_at never reaches the diff"),
    Mutation("updated-at-type-unchecked", "engine/connectors/postgres/source.py",
             "    raise UsageError(f\"target_updated_at {uc.name!r}", "    return as_of\n    raise UsageError(f\"target_updated_at {uc.name!r}",
             (_ASOF + "test_an_updated_at_column_that_is_not_a_time_is_refused",),
             "a text updated_at column reaches the server (an internal error instead of exit 2)"),
]
