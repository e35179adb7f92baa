"""`recon cost`: measure what an incident cost from the explain and diff outputs, then run the
data-debt model of :mod:`engine.core.cost` on it. Reading the artefacts is here; the arithmetic is
pure and lives in core."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from engine import workspace
from engine.app.trust import TrustOptions, overall, verify
from engine.core.cost import CostInputs, CostResult, Measured, build_inputs, model, to_json
from engine.core.errors import UsageError


def measure(explain_dir: Path | None, diff_dir: Path | None) -> Measured:
    """Read the measured inputs from `recon explain --out` and `recon diff --out` directories.

    The absolute CLV variance comes from the diff summary (`columns.<col>.abs_variance`: the diff
    already summed it over every mismatched key); without a diff summary it is summed over the
    findings (|warehouse − Salesforce| per mismatched record), which covers the same records.
    The diff is looked for in --diff, else where explain.json says it read it, else next to the
    explain directory (`../diff`, the demo's layout).
    """
    overpayment: Decimal | None = None
    column: str | None = None
    explain_doc: dict[str, Any] = {}
    over_from = var_from = None
    if explain_dir is not None:
        ep = workspace.ExplainOutput(explain_dir).summary_path
        explain_doc = _read_json(ep, f"{explain_dir} has no explain.json: pass the --out DIR of `recon explain`")
        try:
            overpayment = Decimal(str(explain_doc["exposure"]["total"]))
        except (KeyError, TypeError, InvalidOperation):
            raise UsageError(f"{ep}: no exposure.total: it is not an explain output, or an old one; rerun `recon explain`") from None
        column = explain_doc.get("column")
        over_from = f"{ep} exposure.total"
    summary_path: Path | None = None
    if diff_dir is not None:
        summary_path = workspace.DiffOutput(diff_dir).summary_path
        if not summary_path.is_file():
            raise UsageError(f"{diff_dir} has no summary.json: pass the --out DIR of `recon diff`")
    elif explain_dir is not None:
        for cand in (explain_doc.get("diff"), workspace.RunDirectory.sibling_diff(explain_dir).dir):
            if cand and workspace.DiffOutput(Path(cand)).exists():
                summary_path = workspace.DiffOutput(Path(cand)).summary_path
                break
    variance: Decimal | None = None
    if summary_path is not None:
        summary = _read_json(summary_path, f"{summary_path} is unreadable")
        cols = summary.get("columns") or {}
        col = column if column in cols else (next(iter(cols)) if len(cols) == 1 else None)
        if col is None and cols:
            raise UsageError(f"{summary_path} compares several columns ({', '.join(cols)}) and no explain output "
                             "says which one is CLV: pass --explain DIR too")
        if col is not None:
            try:
                variance = Decimal(str(cols[col].get("abs_variance") or "0"))
            except InvalidOperation:
                raise UsageError(f"{summary_path}: columns.{col}.abs_variance is not a number") from None
            column = col
            var_from = f"{summary_path} columns.{col}.abs_variance"
    findings = workspace.ExplainOutput(explain_dir).findings_path if explain_dir is not None else None
    if variance is None and findings is not None and findings.is_file():
        variance = abs_variance_from_findings(findings)
        var_from = f"{findings} Σ|warehouse_value − salesforce_value|"
    return Measured(commission_overpayment=overpayment, clv_abs_variance=variance, column=column,
                    explain=str(explain_dir) if explain_dir else None,
                    diff=str(summary_path.parent) if summary_path else None,
                    overpayment_from=over_from, variance_from=var_from)


def abs_variance_from_findings(path: Path) -> Decimal:
    """Σ|warehouse_value − salesforce_value| over findings where both values are known."""
    import polars as pl

    dec = pl.Decimal(38, 6)
    f = pl.read_parquet(path, columns=["salesforce_value", "warehouse_value"])
    s = f.select((pl.col("warehouse_value").cast(dec, strict=False) - pl.col("salesforce_value").cast(dec, strict=False))
                 .abs().sum().alias("v"))["v"][0]
    return Decimal(str(s)) if s is not None else Decimal(0)


def evaluate(explain_dir: Path | None, diff_dir: Path | None, section: dict[str, Any] | None = None,
             sets: dict[str, Decimal] | None = None, where: str = "configuration"
             ) -> tuple[CostInputs, CostResult, dict[str, str], Measured]:
    """Measure, merge the inputs, run the model: what `recon cost` and the demo do.

    `to_json(*evaluate(...))` is the cost.json document.
    """
    measured = measure(explain_dir, diff_dir)
    inputs, sources = build_inputs(section or {}, sets or {}, measured, where)
    return inputs, model(inputs), sources, measured


def verify_measured(measured: Measured, trust: TrustOptions) -> dict[str, Any]:
    """How the explain and diff directories the figures came from were verified (exit 4 when one
    does not match the run that wrote it); ``unverified`` with nothing to check them against."""
    parts: dict[str, dict[str, Any]] = {}
    if measured.explain:
        out = workspace.ExplainOutput(Path(measured.explain))
        files = [f for f in out.files() if f.is_file()]  # findings.parquet is optional here
        parts["explain"] = verify(out.dir, files, command="explain", trust=trust).to_dict()
    if measured.diff:
        d = workspace.DiffOutput(Path(measured.diff))
        parts["diff"] = verify(d.dir, [d.summary_path], command="diff", trust=trust).to_dict()
    return overall(parts)


def document(explain_dir: Path | None, diff_dir: Path | None, section: dict[str, Any] | None = None,
             sets: dict[str, Decimal] | None = None, where: str = "configuration",
             trust: TrustOptions | None = None) -> tuple[dict[str, Any], tuple[CostInputs, CostResult, dict[str, str], Measured]]:
    """The `recon cost --json` document with its ``verification`` block, and what it was made of."""
    parts = evaluate(explain_dir, diff_dir, section, sets, where)
    doc = to_json(*parts)
    doc["verification"] = verify_measured(parts[3], trust or TrustOptions())
    return doc, parts


def _read_json(path: Path, missing_message: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(missing_message) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not readable JSON ({type(exc).__name__}): regenerate it") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a JSON object: regenerate it")
    return doc
