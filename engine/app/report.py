"""`recon report`: gather a recon output directory's artefacts and render them with
:mod:`engine.report.html`. Reading and finding files is here; the page is built from plain data."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine import workspace
from engine.app import cost as cost_mod
from engine.app.trust import TrustOptions, overall, verify
from engine.config import ReportSettings
from engine.core import cost as cost_model
from engine.core import currency
from engine.core.errors import UsageError, VerificationError
from engine.report import html, sections


# -- loading -------------------------------------------------------------------------------------
def _load_json(p: Path) -> dict[str, Any] | None:
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{p}: not readable JSON ({type(exc).__name__}): regenerate it") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{p}: expected a JSON object: regenerate it")
    return doc


FINDING_COLUMNS = ("Id", "class", "owner_id", "salesforce_value", "warehouse_value", "copy_offsets", "overpayment",
                   "sec_critical", "currency")


def _load_findings(p: Path) -> list[dict[str, Any]]:
    if not p.is_file():
        return []
    import polars as pl

    try:
        f = pl.read_parquet(p)
    except Exception as exc:  # polars raises several exception types for a damaged file
        raise UsageError(f"{p}: not a readable Parquet file ({type(exc).__name__}): rerun `recon explain`") from None
    return f.select([c for c in FINDING_COLUMNS if c in f.columns]).to_dicts()


def _find_repair(d: Path, verified: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON under repair/ with per-class counts. In a verified report only the repair output's
    own files (repair.json, then plan.json), which :func:`verify_run` checked: never another JSON
    someone put there. Unverified (marked so in red), any JSON with such counts, repair.json first
    (names aren't fixed by the contract)."""
    rep = workspace.RepairOutput(workspace.RunDirectory(d).repair_dir)
    if not rep.dir.is_dir():
        return None, None
    fallback: tuple[dict[str, Any] | None, str | None] = (None, None)
    candidates = ((p for p in (rep.report_path, rep.plan_path) if p.is_file()) if verified else
                  sorted(rep.dir.rglob("*.json"), key=lambda p: (p.name != "repair.json", str(p))))
    for p in candidates:
        try:
            doc = _load_json(p)
        except UsageError:
            continue
        rc = html.repair_counts(doc)
        if rc and rc[0].startswith(("records[]", "corrections[]")):
            return doc, str(p.relative_to(d))
        if rc and fallback[0] is None:
            fallback = (doc, str(p.relative_to(d)))
    return fallback


def verify_run(run: workspace.RunDirectory, trust: TrustOptions) -> dict[str, Any]:
    """Each artefact of a run directory that is there, checked against the run that wrote it
    (exit 4 naming the first file that does not match); ``unverified`` with nothing to check
    against. ``cost.json`` counts when a `recon cost` run recorded it (the demo does); one that no
    recorded run wrote (the CLI's ``recon cost --json > cost.json`` records nothing) is left out of
    the checks and out of the report, which recomputes the model from the verified measurements
    (:func:`collect`): a figure the report cannot trace never reaches it, and the user is not stuck."""
    parts: dict[str, dict[str, Any]] = {}
    for name, out, command in (("diff", run.diff, "diff"), ("explain", run.explain, "explain"),
                               ("diff-after", run.diff_after, "diff")):
        if _present(out.files()):  # any of its files is there: the report reads no others
            parts[name] = verify(out.dir, _present(out.files()), command=command, trust=trust).to_dict()
    rep = workspace.RepairOutput(run.repair_dir)
    if _present(rep.files()):
        parts["repair"] = verify(rep.dir, _present(rep.files()), command="repair", trust=trust).to_dict()
    if run.cost_path.is_file():
        try:
            parts["cost"] = verify(run.root, [run.cost_path], command="cost", trust=trust).to_dict()
        except VerificationError:
            pass  # not recorded by any run: collect() recomputes it from what was verified
    return overall(parts)


def _present(files: list[Path]) -> list[Path]:
    return [f for f in files if f.is_file()]


def collect(from_dir: Path, config: Any = None, top_owners: int = 15, exclude: Path | None = None,
            trust: TrustOptions | None = None) -> html.ReportInputs:
    """Load a recon output directory (the demo's `recon-out/` layout), verified first."""
    from engine import __version__

    if not from_dir.is_dir():
        raise UsageError(f"--from {from_dir}: no such directory: pass the recon output directory (e.g. recon-out)")
    run = workspace.RunDirectory(from_dir)
    verification = verify_run(run, trust or TrustOptions())
    diff = _load_json(run.diff.summary_path)
    explain = _load_json(run.explain.summary_path)
    if diff is None and explain is None:
        raise UsageError(f"{from_dir} holds no recon outputs (diff/summary.json, explain/explain.json): "
                         "run `recon demo`, or point --from at the directory holding diff/ and explain/")
    findings = _load_findings(run.explain.findings_path)
    repair, repair_path = _find_repair(from_dir, verification["status"] != "unverified")
    cost_doc = _load_json(run.cost_path)
    note = None
    untraced = cost_doc is not None and "cost" not in verification["parts"] and verification["status"] != "unverified"
    if untraced:
        cost_doc = None
    if cost_doc is None and explain is not None:
        section = config.section("cost") if config is not None else {}
        try:
            cost_doc = cost_model.to_json(*cost_mod.evaluate(
                run.explain.dir, run.diff.dir if diff is not None else None, section, None,
                getattr(config, "where", "configuration")))
            note = (("cost.json in this directory matches no recorded `recon cost` run, so it is not shown: "
                     if untraced else "No cost.json in this directory: ")
                    + "the cost model was computed from the measurements with "
                    + ("the [cost] settings of the config and " if section else "") + "the example defaults.")
        except UsageError as exc:  # the rest of the report is still worth having
            note = f"cost model not computed: {exc}"
    elif cost_doc is None:
        note = "no explain output, so no measured exposure: run `recon explain`, then `recon cost --json > cost.json`"
    settings = config.report() if config is not None else ReportSettings()
    currencies = _currencies(explain, findings, settings, getattr(config, "where", "configuration"))
    action_list = _load_json(workspace.RepairOutput(run.repair_dir).dir / workspace.ACTION_LIST_JSON) or {}
    ex = exclude.resolve() if exclude else None
    arts = []
    for p in sorted(from_dir.rglob("*")):
        if p.is_file() and p.resolve() != ex and not p.name.startswith("."):
            arts.append((str(p.relative_to(from_dir)), p.stat().st_size))
    return html.ReportInputs(source_dir=str(from_dir), diff=diff, diff_after=_load_json(run.diff_after.summary_path),
                        explain=explain, findings=findings, repair=repair, repair_path=repair_path, cost=cost_doc,
                        cost_note=note, artefacts=arts[:500], top_owners=top_owners, version=__version__,
                        verification=verification, currency=settings.currency,
                        owners={str(k): str(v) for k, v in ((explain or {}).get("owners") or {}).items()},
                        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
                        action_list=[r for r in action_list.get("records") or [] if isinstance(r, dict)],
                        currencies=currencies)


def _currencies(explain: dict[str, Any] | None, findings: list[dict[str, Any]], settings: ReportSettings,
                where: str) -> list[sections.CurrencyRow] | None:
    """Per-currency amounts for an org whose records carry a currency (explain recorded its
    ``currency_field``); refused (exit 2, naming ``[report] rates``) when a currency in use has no
    rate into the report currency. None for a single-currency org."""
    field = (explain or {}).get("currency_field")
    if not field:
        return None
    used = {str(f.get("currency") or settings.currency) for f in findings}
    missing = currency.missing_rates(used, settings.currency, settings.rates)
    if missing:
        example = ", ".join(f'{c} = "…"' for c in missing)
        raise UsageError(f"{where}: [report] rates: the org records amounts in {', '.join(sorted(used))} ({field}) and "
                         f"there is no rate into {settings.currency} for {', '.join(missing)}: add [report.rates] "
                         f"with {example} (units of {settings.currency} per unit, as decimal strings)")
    return sections.currency_rows(findings, settings.currency, settings.rates)


def write_report(from_dir: Path, out: Path | None = None, config: Any = None, top_owners: int = 15,
                 trust: TrustOptions | None = None, checkpoint: Path | None = None) -> Path:
    """Build the report of `from_dir` into `out` (default `from_dir/report.html`), atomically."""
    return make_report(from_dir, out, config, top_owners, trust, checkpoint)[0]


def make_report(from_dir: Path, out: Path | None = None, config: Any = None, top_owners: int = 15,
                trust: TrustOptions | None = None, checkpoint: Path | None = None
                ) -> tuple[Path, html.ReportInputs]:
    """:func:`write_report`, and the inputs the page was built from (the demo prints its headline).

    Its Proof section is :func:`engine.app.proof.report_proof` (signatures, subjects, Merkle roots,
    ledger chain up to ``checkpoint``). When verification fails (exit 4) the page is still written,
    so the failure can be shown to whoever signs: in red, and when an artefact it would show did not
    verify, without any figure (:func:`html.build_refused_html`)."""
    target = out or workspace.RunDirectory(from_dir).report_path
    if target.is_dir():
        target = target / workspace.REPORT
    trust = trust or TrustOptions()
    try:
        inp: html.ReportInputs | None = collect(from_dir, config, top_owners, exclude=target, trust=trust)
        refused = None
    except VerificationError as exc:
        inp, refused = None, exc
    proof = _proof(from_dir, trust, checkpoint)
    if inp is None:
        from engine import __version__

        _write(target, html.build_refused_html(str(from_dir), str(refused), proof, __version__))
        raise VerificationError(f"{refused} (written to {target}: the failure and the proof, no figures)")
    inp.proof = proof
    _write(target, html.build_html(inp))
    if proof["status"] == "failed":
        first = next(c for c in proof["checks"] if c["status"] == "failed")
        raise VerificationError(f"verification failed: {first['subject']} {first['check']}: {first['detail']} "
                                f"(see the Proof section of {target})")
    return target, inp


def _proof(from_dir: Path, trust: TrustOptions, checkpoint: Path | None) -> dict[str, Any]:
    from engine.app.proof import report_proof

    return report_proof(from_dir, pubkey=trust.pubkey, ledger_dsn=trust.ledger_dsn, checkpoint=checkpoint,
                        passfile=trust.passfile)


def _write(target: Path, page: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
