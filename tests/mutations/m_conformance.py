"""Issue 22, "the local Salesforce API is our model of Salesforce": flip behaviours of the local API
that the conformance tests (tests/conformance) compare with the published examples; each must fail."""

from __future__ import annotations

from tests.mutations import Mutation

APP = "engine/local/sfapi/app.py"
REST = "tests/conformance/test_rest.py"
BULK = "tests/conformance/test_bulk.py"

MUTATIONS = [
    Mutation("bulk-locator-header-dropped", APP,
             'headers={"Sforce-Locator": next_loc, "Sforce-NumberOfRecords": str(end - start)})',
             'headers={"Sforce-NumberOfRecords": str(end - start)})',
             (f"{BULK}::test_results_pages_follow_the_locator_to_null",),
             "Bulk result pages no longer carry the Sforce-Locator header"),
    Mutation("bulk-last-locator-empty", APP,
             'next_loc = encode_locator(end) if end < job.records else "null"',
             'next_loc = encode_locator(end) if end < job.records else ""',
             (f"{BULK}::test_results_pages_follow_the_locator_to_null",),
             "the last result set's Sforce-Locator is empty instead of the string 'null'"),
    Mutation("bulk-results-any-version", APP,
             "if version != job.api_version:", "if False:",
             (f"{BULK}::test_results_need_the_api_version_that_created_the_job",),
             "results are served to another API version than the job's (the guide: 409)"),
    Mutation("bulk-create-job-counters", APP,
             "            info = {k: info[k] for k in CREATE_JOB_KEYS}\n", "",
             (f"{BULK}::test_create_job_answers_like_the_guide_example",),
             "the job-create answer carries the full job info (jobType, counters) the guide's example lacks"),
    Mutation("bulk-job-type", APP, '"jobType": "V2Query"', '"jobType": "V2"',
             (f"{BULK}::test_job_info_matches_the_guide_example",),
             "job info says jobType V2 instead of V2Query"),
    Mutation("bulk-crlf-ignored", APP, 'crlf=job.line_ending == "CRLF")', "crlf=False)",
             (f"{BULK}::test_caret_delimiter_and_crlf_line_endings",),
             "a CRLF job's data rows end with LF"),
    Mutation("bulk-delete-running-error-code", APP, 'raise StoreError("API_ERROR", "Error encountered when deleting',
             'raise StoreError("INVALIDJOBSTATE", "Error encountered when deleting',
             (f"{BULK}::test_abort_and_delete_answer_like_the_guide",),
             "deleting a running job answers INVALIDJOBSTATE instead of the guide's API_ERROR"),
    Mutation("rest-session-error-code", APP, 'sf_error(401, "INVALID_SESSION_ID"', 'sf_error(401, "INVALID_AUTH"',
             (f"{REST}::test_error_bodies_match_the_guide[INVALID_SESSION_ID]",),
             "an invalid session answers errorCode INVALID_AUTH instead of INVALID_SESSION_ID"),
    Mutation("rest-error-fields-always", APP, '    if fields:\n        out["fields"] = list(fields)',
             '    out["fields"] = list(fields or [])',
             (f"{REST}::test_error_bodies_match_the_guide[NOT_FOUND]",),
             "every error object carries fields: [] (the guide's NOT_FOUND example has message and errorCode only)"),
    Mutation("rest-error-content-type", APP, "status_code=status, headers=headers, media_type=JSON_UTF8)",
             "status_code=status, headers=headers)",
             (f"{REST}::test_error_bodies_match_the_guide[INVALID_SESSION_ID]",),
             "error bodies answered before dispatch (401, unknown resource) lose charset=UTF-8"),
    Mutation("rest-json-content-type", APP, 'resp.headers["content-type"] = JSON_UTF8', "pass",
             (f"{REST}::test_describe_has_the_documented_shape",),
             "JSON answers of the handlers (describe, job info) are application/json without charset=UTF-8"),
    Mutation("rest-query-done-early", APP, '\',"done":false,"nextRecordsUrl":\'', '\',"done":true,"nextRecordsUrl":\'',
             (f"{REST}::test_query_pages_through_next_records_url",),
             "a first batch with more to come says done: true"),
    Mutation("rest-limit-info-missing", APP, "        resp.headers.update(org.limit_header())\n        if resp.media_type",
             "        if resp.media_type",
             (f"{REST}::test_every_rest_answer_carries_the_limit_info_header",),
             "REST answers no longer carry Sforce-Limit-Info"),
]
