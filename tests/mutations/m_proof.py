"""Issue 21's Proof section and print stylesheet: each breakage below must fail the tests listed
with it (unit tests over a signed run directory, the ledger test on the embedded PostgreSQL, and
the Chromium tests of the page and its PDF)."""

from __future__ import annotations

from tests.mutations import Mutation

U = "tests/unit/test_report_proof.py::"
LEDGER = "tests/integration/test_report_proof_ledger.py"
PRINT = "tests/e2e/test_report_print.py::test_print_to_pdf_keeps_every_chart_on_one_page"
PAGE = "tests/e2e/test_report_print.py::test_proof_section_in_chromium_and_a_tampered_manifest_in_red"

MUTATIONS = [
    Mutation("proof-failed-check-shown-as-passed", "engine/app/proof.py",
             'rows[c].update(status="failed", detail=str(exc))', 'rows[c].update(status="ok", detail=str(exc))',
             (U + "test_a_tampered_manifest_exits_4_and_the_page_shows_the_failure_without_figures",),
             "a manifest check that failed is listed as passed"),
    Mutation("proof-roots-claimed-without-snapshot", "engine/app/proof.py",
             'rows["roots"]["detail"] = "not checked: no snapshot was written with this run"',
             'rows["roots"].update(status="ok", detail="passed")',
             (U + "test_every_check_is_listed_with_the_key_fingerprint_and_the_recomputed_roots",),
             "Merkle roots claimed checked for a run that wrote no snapshot"),
    Mutation("proof-fingerprint-of-the-pem-file", "engine/app/proof.py",
             '"fingerprint": mf.key_id(mf.load_public_key(pubkey))', '"fingerprint": mf.file_digest(pubkey)',
             (U + "test_every_check_is_listed_with_the_key_fingerprint_and_the_recomputed_roots",),
             "the fingerprint shown is not the key's"),
    Mutation("proof-stage-mislabelled", "engine/evidence/manifest.py",
             'with _check("subjects"):', 'with _check("signature"):',
             (U + "test_an_edited_output_fails_its_subject_digest_after_a_valid_signature",),
             "a subject digest failure is reported as a signature failure"),
    Mutation("proof-refusal-exits-0", "engine/app/report.py",
             'raise VerificationError(f"{refused} (written to {target}: the failure and the proof, no figures)")',
             "return target",
             (U + "test_a_tampered_manifest_exits_4_and_the_page_shows_the_failure_without_figures",),
             "a report whose artefacts did not verify exits 0"),
    Mutation("proof-failure-exits-0", "engine/app/report.py",
             'if proof["status"] == "failed":', "if False:",
             (U + "test_an_edited_snapshot_re_signed_fails_the_root_check_in_the_full_report",),
             "a failed Proof check (roots) leaves the exit code 0"),
    Mutation("proof-checkpoint-ignored", "engine/app/proof.py",
             "rep = ledger_verify(dsn, checkpoint=checkpoint, key=pubkey, passfile=passfile)",
             "rep = ledger_verify(dsn, checkpoint=None, key=pubkey, passfile=passfile)",
             (LEDGER,), "the ledger is verified without the checkpoint it was given"),
    Mutation("proof-broken-chain-passes", "engine/app/proof.py",
             'chain.update(status="failed", detail=f"{where}" + "; ".join(rep.problems))',
             'chain.update(status="ok", detail=f"{where}" + "; ".join(rep.problems))',
             (LEDGER,), "a broken ledger chain is listed as passed"),
    Mutation("proof-failure-not-red", "engine/report/html.py",
             "table.proof tr.failed td{color:#b91c1c;", "table.proof tr.failed td{",
             (PAGE,), "a failed check is not shown in red"),
    Mutation("print-charts-may-split", "engine/report/html.py",
             "figure.chart,.kpi,.verify,table.data tr{break-inside:avoid", ".kpi,.verify,table.data tr{break-inside:avoid",
             (PRINT,), "printing may split a chart across pages"),
    Mutation("print-end-marker-avoids-break", "engine/report/html.py",
             "h1,h2,p.figmark:not(.end){break-after:avoid", "h1,h2,p.figmark{break-after:avoid",
             (PRINT,), "the break between two figures is forbidden, so the browser breaks inside one"),
]
