"""The circuit breaker: stop the financial aggregation while a mapping's variance is too high.

Why this shape:

* **A decision log, not a flag.** Every decision is a row of the append-only, hash-chained ledger
  table ``recon_audit.gate_decisions`` (mapping, state, ratios, thresholds, the digest of the diff it
  was made from, the reason, the operator of an override, the run id). Nothing is ever updated, so
  "who closed it, when, from which evidence" is always answerable and cannot be rewritten without
  breaking the chain.
* **A state per reason.** ``variance`` (diffs, overrides) and ``lag`` (``--lag``, :mod:`engine.app.lag`):
  each decision names the reasons it decides, a reason's state is its *latest* decision, and the
  breaker is open while any reason is (:mod:`engine.store.breaker`). Catching up closes ``lag``
  and nothing else; the exit code and the JSON ``state`` are the whole breaker's.
* **Either ratio trips it.** A diff's ``variance_ratio`` (differing records / source records) and
  the gated column's ``amount_variance_ratio`` (Σ|target − source| / Σ|source|) are compared with
  thresholds (default 0.5 % each; per mapping in ``[gate]``); a ratio strictly *above* its threshold
  opens the breaker. Comparisons are exact (fractions of the shortest decimal spelling), so 3/600
  against 0.005 is "equal", not "above by rounding".
* **It closes only on evidence.** A passing diff closes it, or a manual override that names an
  operator and a reason (both written to the ledger). A diff extracted *before* the diff that opened
  the breaker cannot close it (replaying an old passing result is refused).
* **The database enforces it too.** ``recon_audit.assert_circuit_closed(mapping)`` raises SQLSTATE
  ``RC003`` while the latest decision for the mapping is open (and passes when there is none or it
  is closed), so an aggregation that calls it first halts; a scheduler can use ``recon gate`` (exit 3
  when open) instead. The function is SECURITY DEFINER, owned by the NOLOGIN ``recon_audit_owner``
  with a fixed ``search_path``; callers need only EXECUTE (granted to PUBLIC) and USAGE on the
  ``recon_audit`` schema (members of ``recon_audit_writer``/``recon_audit_reader`` have it).

Exclusion policy (version 1), for the remainder a repair deliberately leaves:

After ``recon repair --apply`` the warehouse still differs from Salesforce for the records repair
does not correct: today ``stale_salesforce`` (Salesforce itself is behind the event stream; the
warehouse is right, and the repair issued an action list to the record owners) and ``unexplained``
(left alone for a human). ``recon gate --diff DIR --exclude-from REPAIR_OR_EXPLAIN_DIR`` recomputes
both ratios without the records that output classified in an *accepted* class:

1. Accepted classes: the excludable classes of :mod:`engine.core.classes`; those accepted by
   default (``stale_salesforce``) unless ``--accept-classes`` names others, the rest
   (``unexplained``) only when named explicitly (``--accept-classes stale_salesforce,unexplained``).
   The classes repair corrects can never be excluded: they are fixed, not waived.
2. A record is excluded only if its difference in the *new* diff is exactly the one that was
   classified: same kind (a mismatch of the gated column only, a missing row, a duplicated key)
   and, for a mismatch, the same Salesforce and warehouse values. Anything else (a value that moved,
   another column differing) is refused, recorded with its reason, and still counts.
3. Excluded records leave the population: they are removed from the numerator and the denominator
   of both ratios.
4. The decision in the ledger lists every excluded key (class, owner, Salesforce, warehouse and
   stream values), every refused key with its reason, the accepted classes, this policy's version
   and the SHA-256 of the classification file it relied on; the repair directory is the normal
   source (its ``action_list.json`` proves the owners were told), an explain directory is accepted
   and recorded as such.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from engine import workspace
from engine.app.evidence import EvidenceOptions
from engine.app.trust import TrustOptions, verify
from engine.config import Config
from engine.core import classes
from engine.core.classes import Repair
from engine.core.errors import Exit, UsageError, VerificationError
from engine.core.gate import (  # noqa: F401  (the policy's names, used by callers of the use case)
    DEFAULT_ACCEPTED,
    DEFAULT_THRESHOLD,
    EXCLUDABLE_CLASSES,
    MAX_LISTED,
    POLICY_VERSION,
    REASONS,
    REPAIRED_CLASSES,
    STATES,
    Decision,
    Thresholds,
    _num,
    _parse_time,
    _pct,
    check_not_stale,
    evaluate,
    exact,
    parse_accept_classes,
)
from engine.core.normalize import parse_decimal
from engine.store.breaker import (  # noqa: F401
    GUARD_MARKER,
    GUARD_VERSION,
    SQLSTATE_OPEN,
    ensure_guard,
    guard_installed,
    install_guard,
    latest_decision,
    open_reasons,
    reason_states,
    record_decision,
)

#: the lag keys of ``[gate] NAME`` (validated by :meth:`engine.config.Config.lag`)
LAG_KEYS = ("lag_amount", "lag_seconds", "lag_offsets", "lag_table")


# -- thresholds from the config -------------------------------------------------------------------
def _threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"{where} must be a number such as 0.005")
    try:
        v = float(value)
    except ValueError:
        raise UsageError(f"{where} = {value!r} is not a number: use e.g. 0.005 for 0.5 %") from None
    if not math.isfinite(v) or v < 0:
        raise UsageError(f"{where} = {value!r} must be a finite number >= 0")
    return v


def thresholds_for(config: Config, mapping: str) -> Thresholds:
    """``[gate]``: scalar keys are defaults for every mapping, ``[gate] NAME = {…}`` overrides them."""
    sect = config.section("gate")
    base: dict[str, Any] = {k: v for k, v in sect.items() if not isinstance(v, dict)}
    per = sect.get(mapping, {})
    if not isinstance(per, dict):
        raise UsageError(f"{config.where}: [gate] {mapping} must be a table like "
                         "{ variance_ratio = 0.005, amount_variance_ratio = 0.005 }")
    merged = {**base, **per}
    known = ("variance_ratio", "amount_variance_ratio", "column", *LAG_KEYS)
    unknown = set(merged) - set(known)
    if unknown:
        raise UsageError(f"{config.where}: [gate] {mapping}: unknown key(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(known)})")
    col = merged.get("column")
    if col is not None and (not isinstance(col, str) or not col):
        raise UsageError(f"{config.where}: [gate] {mapping}.column must be a column name")
    if col is None:
        col = config.roles(mapping).amount  # the mapping's amount role, when it names one
    return Thresholds(
        variance_ratio=_threshold(merged.get("variance_ratio", DEFAULT_THRESHOLD),
                                  f"{config.where}: [gate] {mapping}.variance_ratio"),
        amount_variance_ratio=_threshold(merged.get("amount_variance_ratio", DEFAULT_THRESHOLD),
                                         f"{config.where}: [gate] {mapping}.amount_variance_ratio"),
        column=col)



# -- reading a diff directory ---------------------------------------------------------------------
def _sha256(path: Path) -> str:
    from engine.evidence.manifest import file_digest

    return file_digest(path)


@dataclass(frozen=True)
class DiffInput:
    """A `recon diff --out` directory, read once."""

    dir: Path
    summary: dict[str, Any]
    summary_sha256: str
    differences_path: Path

    @classmethod
    def read(cls, diff_dir: Path) -> DiffInput:
        from engine.app.reconcile import read_outputs

        summary, sp, dp = read_outputs(diff_dir)
        return cls(Path(diff_dir), summary, _sha256(sp), dp)

    @property
    def extracted_at(self) -> datetime | None:
        """When the diff read its data: the earlier of the two sides' extraction times, or None when
        either is missing (an unknown time counts as stale: see ``check_not_stale``)."""
        extracts = [(self.summary.get(side) or {}).get("extract") or {} for side in ("source", "target")]
        # Salesforce records when it read (extracted_at), PostgreSQL its snapshot's time (server_time)
        times = [_parse_time(e.get("extracted_at") or e.get("server_time")) for e in extracts]
        known = [t for t in times if t is not None]
        return min(known) if len(known) == len(times) else None

    def counts(self) -> dict[str, int]:
        s = self.summary
        return {k: int(s.get(k) or 0) for k in ("mismatched", "missing_in_target", "missing_in_source")} | {
            "source_keys": int((s.get("source") or {}).get("keys") or 0)}

    def describe(self) -> dict[str, Any]:
        s = self.summary
        return {"dir": str(self.dir), "summary_sha256": self.summary_sha256,
                "differences_sha256": _sha256(self.differences_path),
                "mapping": s.get("mapping"), "source": (s.get("source") or {}).get("ref"),
                "target": (s.get("target") or {}).get("ref"),
                "extracted_at": self.extracted_at.isoformat() if self.extracted_at else None,
                "merkle_roots": {k: (s.get("merkle") or {}).get(k) for k in ("source_root", "target_root")},
                **self.counts()}


def gated_column(diff: DiffInput, thresholds: Thresholds) -> str:
    cols = list((diff.summary.get("compared_columns") or {}).keys())
    if thresholds.column:
        found = next((c for c in cols if c.lower() == thresholds.column.lower()), None)
        if found is None:
            raise UsageError(f"the gated column {thresholds.column!r} was not compared by the diff in {diff.dir} "
                             f"(compared: {', '.join(cols) or 'none'}): fix [gate] column or the mapping")
        return found
    if len(cols) == 1:
        return cols[0]
    raise UsageError(f"the diff compared {len(cols)} columns ({', '.join(cols)}): name the gated one in "
                     "[gate] MAPPING = { column = \"…\" }")


def _amount_ratio(summary: dict[str, Any], column: str) -> float | None:
    r = (summary.get("amount_variance_ratio") or {}).get(column)
    if r is None:
        return None
    if isinstance(r, str):  # non-finite floats may have been written as strings
        try:
            return float(r)
        except ValueError:
            raise UsageError(f"amount_variance_ratio.{column} = {r!r} is not a number") from None
    return float(r)


# -- exclusions -----------------------------------------------------------------------------------
@dataclass
class ExclusionSource:
    """Classified records from a repair or explain output directory."""

    kind: str  # "repair" or "explain"
    dir: Path
    file: Path
    sha256: str
    mapping: str | None
    column: str | None
    records: list[dict[str, Any]]  # Id, class, kind, salesforce_value, warehouse_value, owner_id, stream_value

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dir": str(self.dir), "file": self.file.name, "sha256": self.sha256,
                "mapping": self.mapping, "column": self.column,
                "action_list_issued": self.kind == "repair"}


def _action_list_class() -> str:
    """The class of a repair plan's action-list record: plan.json does not name it, so there can be
    only one class that repair puts on the action list."""
    found = classes.with_repair(Repair.ACTION_LIST)
    if len(found) != 1:
        raise ValueError("plan.json does not name the class of its action-list records, so exactly one class "
                         f"may go on repair's action list (engine.core.classes has: {', '.join(found) or 'none'})")
    return found[0]


def _left_alone_class(recorded: Any) -> str:
    """The class of a record repair left alone: as recorded when that is a class repair leaves
    alone, else (a class this version does not know) the fallback."""
    if classes.get(recorded) is not None and classes.repair_of(recorded) is Repair.LEAVE:
        return str(recorded)
    return classes.fallback().name


def load_exclusion_source(directory: Path) -> ExclusionSource:
    """A repair output (``plan.json`` with its action list) or an explain output (``findings.parquet``)."""
    d = Path(directory)
    plan = workspace.RepairOutput(d).plan_path
    if plan.is_file():
        try:
            p = json.loads(plan.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{plan} is not valid JSON") from None
        records = [{**r, "class": _action_list_class()} for r in p.get("action_list") or []]
        records += [{**r, "class": _left_alone_class(r.get("class"))} for r in p.get("unexplained") or []]
        return ExclusionSource("repair", d, plan, _sha256(plan), p.get("mapping"), p.get("column"), records)
    explain_out = workspace.ExplainOutput(d)
    findings, exp = explain_out.findings_path, explain_out.summary_path
    if explain_out.exists():
        import polars as pl

        f = pl.read_parquet(findings)
        try:
            e = json.loads(exp.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{exp} is not valid JSON") from None
        records = [{"Id": r["Id"], "class": r["class"], "kind": r["kind"], "owner_id": r["owner_id"],
                    "salesforce_value": r["salesforce_value"], "warehouse_value": r["warehouse_value"],
                    "stream_value": r["dedup_stream_value"]} for r in f.iter_rows(named=True)]
        mapping = e.get("mapping")  # explain.json is verified with its findings; older ones: the diff's
        diff_summary = workspace.DiffOutput(Path(str(e.get("diff") or ""))).summary_path
        if mapping is None and diff_summary.is_file():
            try:
                mapping = json.loads(diff_summary.read_text()).get("mapping")
            except ValueError:
                mapping = None
        return ExclusionSource("explain", d, findings, _sha256(findings), mapping, e.get("column"), records)
    raise UsageError(f"--exclude-from {d}: neither a repair output (plan.json) nor an explain output "
                     "(explain.json and findings.parquet)")


_dec = parse_decimal


@dataclass
class ExclusionResult:
    excluded: list[dict[str, Any]]
    refused: list[dict[str, Any]]
    resolved: int  # classified records no longer different at all
    variance_ratio: Fraction
    amount_variance_ratio: Fraction | float | None


def apply_exclusions(diff: DiffInput, column: str, records: list[dict[str, Any]],
                     accepted: tuple[str, ...]) -> ExclusionResult:
    """Recompute both ratios without the records the policy lets go (see the module docstring)."""
    import polars as pl

    diffs = pl.read_parquet(diff.differences_path)
    wanted = [r for r in records if r.get("class") in accepted]
    by_key: dict[str, list[dict[str, Any]]] = {}
    if wanted:
        ids = pl.Series("key", sorted({str(r["Id"]) for r in wanted}), dtype=pl.Utf8)
        for row in diffs.filter(pl.col("key").is_in(ids.implode())).iter_rows(named=True):
            by_key.setdefault(row["key"], []).append(row)
    excluded: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    resolved = 0
    abs_removed = Decimal(0)
    src_removed = Decimal(0)  # Σ|source| of excluded keys unique on both sides (in source_abs_total)
    src_removed_outside = Decimal(0)  # of excluded missing or duplicated keys: only in pre-total summaries' Σ
    seen: set[str] = set()
    for r in wanted:
        key = str(r["Id"])
        if key in seen:
            continue
        seen.add(key)
        rows = by_key.get(key, [])
        entry = {"key": key, "class": r.get("class"), "owner_id": r.get("owner_id"),
                 "salesforce_value": r.get("salesforce_value"), "warehouse_value": r.get("warehouse_value"),
                 "stream_value": r.get("stream_value")}
        if not rows:
            resolved += 1
            continue
        kinds = {x["kind"] for x in rows}
        want_kind = r.get("kind") or "mismatched"
        reason = None
        if want_kind == "mismatched":
            col_rows = [x for x in rows if x["kind"] == "mismatched" and x["column"] == column]
            others = sorted({str(x["column"] or x["kind"]) for x in rows} - {column})
            if kinds != {"mismatched"} or others:
                reason = f"now also differs in {', '.join(others) or ', '.join(sorted(kinds))}"
            elif not col_rows:
                reason = f"no longer differs in {column}"
            else:
                x = col_rows[0]
                s_new, t_new = _dec(x["source_value"]), _dec(x["target_value"])
                s_old, t_old = _dec(r.get("salesforce_value")), _dec(r.get("warehouse_value"))
                if s_new != s_old or t_new != t_old:
                    reason = (f"values moved since classification (Salesforce {r.get('salesforce_value')} → "
                              f"{x['source_value']}, warehouse {r.get('warehouse_value')} → {x['target_value']})")
                else:
                    if s_new is not None and t_new is not None:
                        abs_removed += abs(t_new - s_new)
                    if s_new is not None:
                        src_removed += abs(s_new)
        elif want_kind in ("missing_in_target", "duplicate_key"):
            if kinds != {want_kind}:
                reason = f"the difference is now {', '.join(sorted(kinds))}, not {want_kind}"
            else:
                s = _dec(r.get("salesforce_value"))
                if s is not None:
                    src_removed_outside += abs(s)
        else:
            reason = f"unknown finding kind {want_kind!r}"
        if reason:
            refused.append({**entry, "reason": reason})
        else:
            excluded.append(entry)
    c = diff.counts()
    bad = c["mismatched"] + c["missing_in_target"] + c["missing_in_source"] - len(excluded)
    keys = c["source_keys"] - len(excluded)
    variance = Fraction(bad, keys) if keys > 0 else Fraction(1 if bad > 0 else 0)
    raw_amount = _amount_ratio(diff.summary, column)
    amount: Fraction | float | None
    if raw_amount is None:
        amount = None
    else:
        col = (diff.summary.get("columns") or {}).get(column) or {}
        abs_v = _dec(col.get("abs_variance")) or Decimal(0)
        new_abs = max(Decimal(0), abs_v - abs_removed)
        if math.isnan(raw_amount):
            amount = raw_amount
        elif raw_amount == 0 or new_abs == 0:
            amount = Fraction(0)
        elif math.isinf(raw_amount):
            amount = float("inf")
        else:
            # Σ|source| over the keys unique on both sides is in summaries since they carry
            # source_abs_total (a missing or duplicated key is not in it); older ones: abs_variance /
            # ratio, a Σ over every source row, so an excluded missing or duplicated key leaves it too
            total = _dec(col.get("source_abs_total"))
            if total is None:
                total = Decimal(abs_v) / Decimal(repr(raw_amount)) - src_removed_outside
            rest = total - src_removed
            amount = Fraction(new_abs) / Fraction(rest) if rest > 0 else float("inf")
    return ExclusionResult(excluded, refused, resolved, variance, amount)


# -- the diff must be the mapping's ---------------------------------------------------------------
def check_request(diff: DiffInput, config: Config, mapping: str | None) -> str:
    """The mapping whose breaker ``diff`` may decide: the one it was run for, when it compared
    exactly what the mapping says (sides, key, columns, tolerances, types, conditions, and no
    ``--as-of``: the mapping has none). A diff without a mapping, narrowed by a condition, loosened
    by a tolerance or run on other tables never decides: VerificationError (exit 4) naming
    summary.json and the differing fields."""
    from engine.app.reconcile import DiffRequest

    sp = workspace.DiffOutput(diff.dir).summary_path
    diff_mapping = diff.summary.get("mapping")
    if not diff_mapping:
        raise VerificationError(f"{sp} is a diff run without a mapping: it never decides a mapping's breaker; run "
                                "`recon diff -C recon.toml --mapping NAME --out DIR`")
    if mapping and mapping != diff_mapping:
        raise VerificationError(f"{sp} is a diff of mapping {diff_mapping!r}, not {mapping!r}: it cannot decide "
                                f"{mapping!r}'s breaker")
    recorded = diff.summary.get("request")
    if not isinstance(recorded, dict):
        raise VerificationError(f"{sp} does not record what the diff compared (no request): rerun "
                                f"`recon diff -C recon.toml --mapping {diff_mapping} --out DIR`")
    expected = DiffRequest.from_mapping(config.mapping(diff_mapping)).identity()
    differing = sorted(k for k in expected.keys() | recorded.keys() if expected.get(k) != recorded.get(k))
    if differing:
        raise VerificationError(f"{sp} is not a diff of [mapping.{diff_mapping}] as configured: "
                                f"{', '.join(differing)} differ(s); a narrowed or loosened diff cannot decide the "
                                f"breaker: rerun `recon diff -C recon.toml --mapping {diff_mapping} --out DIR`")
    return str(diff_mapping)


# -- deciding -------------------------------------------------------------------------------------
def decide(diff_dir: Path, config: Config, *, run_id: str, mapping: str | None = None,
           exclude_from: Path | None = None, accept_classes: tuple[str, ...] | None = None) -> Decision:
    """A decision from a diff directory (and optionally an exclusion source). Pure: writes nothing."""
    diff = DiffInput.read(diff_dir)
    mapping = check_request(diff, config, mapping)
    th = thresholds_for(config, mapping)
    column = gated_column(diff, th)
    raw_var = float(diff.summary.get("variance_ratio") or 0.0)
    c = diff.counts()
    bad = c["mismatched"] + c["missing_in_target"] + c["missing_in_source"]
    var: Fraction | float = raw_var
    if (diff.summary.get("source") or {}).get("keys") is not None:  # exact from the counts
        var = Fraction(bad, c["source_keys"]) if c["source_keys"] > 0 else Fraction(1 if bad else 0)
    raw_amount = _amount_ratio(diff.summary, column)
    amount: Fraction | float | None = raw_amount
    exclusion = None
    if exclude_from is not None:
        src = load_exclusion_source(exclude_from)
        accepted = accept_classes or classes.accepted_by_default()
        if src.mapping != mapping:
            raise VerificationError(f"{src.file}: --exclude-from {exclude_from} classified "
                                    f"{'mapping ' + repr(src.mapping) if src.mapping else 'a diff without a mapping'}, "
                                    f"not {mapping!r}: pass the repair or explain output of this mapping's diff")
        if src.column and src.column.lower() != column.lower():
            raise UsageError(f"--exclude-from {exclude_from} classified column {src.column!r}, but the gate "
                             f"watches {column!r}")
        res = apply_exclusions(diff, column, src.records, accepted)
        var, amount = res.variance_ratio, res.amount_variance_ratio
        exclusion = {"policy_version": POLICY_VERSION, "accepted_classes": list(accepted),
                     "source": src.describe(), "excluded_count": len(res.excluded),
                     "refused_count": len(res.refused), "resolved_since_classification": res.resolved,
                     "excluded": res.excluded[:MAX_LISTED], "refused": res.refused[:MAX_LISTED],
                     "truncated": max(0, len(res.excluded) - MAX_LISTED) + max(0, len(res.refused) - MAX_LISTED)}
    elif accept_classes:
        raise UsageError("--accept-classes needs --exclude-from DIR (the repair or explain output that classified "
                         "the records)")
    state, tripped = evaluate(var, amount, th)
    thresholds = {"variance_ratio": th.variance_ratio, "amount_variance_ratio": th.amount_variance_ratio}
    ratios = {"variance_ratio": _num(var), "amount_variance_ratio": _num(amount)}
    if state == "open":
        parts = [f"{n} {_pct(var if n == 'variance_ratio' else amount)} > {_pct(thresholds[n])}" for n in tripped]
        reason = "above threshold: " + "; ".join(parts)
    else:
        reason = (f"within thresholds: variance_ratio {_pct(var)} <= {_pct(th.variance_ratio)}, "
                  f"amount_variance_ratio {_pct(amount)} <= {_pct(th.amount_variance_ratio)}")
    if amount is None:
        reason += f" ({column} has no amount variance: only the record ratio applies)"
    if exclusion:
        reason += (f"; {exclusion['excluded_count']} record(s) excluded by {POLICY_VERSION} "
                   f"({', '.join(exclusion['accepted_classes'])}), {exclusion['refused_count']} refused")
    return Decision(mapping=mapping, state=state, kind="diff", reason=reason, run_id=run_id, column=column,
                    thresholds=thresholds, ratios=ratios,
                    raw_ratios={"variance_ratio": raw_var, "amount_variance_ratio": raw_amount},
                    tripped=tripped, diff=diff.describe(), exclusion=exclusion)


def override(mapping: str, state: str, *, reason: str | None, operator: str | None, run_id: str) -> Decision:
    """A manual decision; both a reason and an operator name are required."""
    if state not in STATES:
        raise UsageError(f"--override {state!r}: use open or close")
    if not (reason or "").strip():
        raise UsageError("--override needs --reason TEXT (why the breaker is overridden)")
    if not (operator or "").strip():
        raise UsageError("--override needs --operator NAME (who overrides the breaker)")
    # closing is the operator's word for the whole breaker; opening is an operator's finding about the
    # data, which a passing diff may close (as before reasons existed): it opens ``variance``
    reasons = dict.fromkeys(REASONS, "closed") if state == "closed" else {"variance": "open"}
    return Decision(mapping=mapping, state=state, kind="override", reason=str(reason).strip(), run_id=run_id,
                    operator=str(operator).strip(), reasons=reasons)


# -- committing ---------------------------------------------------------------------------------------
def commit(dsn: str, decision: Decision, *, passfile: str | Path | None = None) -> tuple[dict[str, Any], str, str | None]:
    """Record a decision as its reasons' new state: refuse a stale diff, append it to the ledger,
    then make sure the SQL guard exists. The decision is recorded first: a scheduler relies on it
    even if the guard cannot be installed. Returns the ledger entry, the guard's status and, when the
    guard could not be installed, the reason (a warning for the caller to show). ``passfile``: the
    libpq password file of the ledger connections."""
    if decision.kind == "diff":  # a diff is stale against the decision that opened ``variance``
        check_not_stale(decision, reason_states(dsn, decision.mapping, passfile=passfile).get("variance"))
    latest = latest_decision(dsn, decision.mapping, passfile=passfile)
    entry = record_decision(dsn, decision, latest, passfile=passfile)
    try:
        return entry, ("installed now" if ensure_guard(dsn, passfile=passfile) else "installed"), None
    except UsageError as exc:
        return entry, f"not installed: {exc}", str(exc)


def breaker_state(reasons: dict[str, str]) -> str:
    """The breaker as a whole: open while any reason is."""
    return "open" if any(v != "closed" for v in reasons.values()) else "closed"


# -- the use case: `recon gate` -------------------------------------------------------------------
MODES = ("--diff", "--override", "--status", "--install-guard", "--lag")


@dataclass(frozen=True)
class GateRequest:
    """What `recon gate` was asked: exactly one mode (a diff, an override, the status, installing the
    SQL guard) and where to record the decision."""

    diff: Path | None = None
    mapping: str | None = None
    exclude_from: Path | None = None
    accept_classes: str | None = None
    override: str | None = None
    reason: str | None = None
    operator: str | None = None
    status: bool = False
    install_guard: bool = False
    guard_roles: tuple[str, ...] = ()
    out_dir: Path | None = None
    evidence: EvidenceOptions = EvidenceOptions()
    #: ``--key PUB``: verify the diff (and --exclude-from) by the manifest signed in its directory
    pubkey: Path | None = None
    #: ``--lag``: decide the ``lag`` reason from what the warehouse's consumer has not applied yet
    lag: bool = False

    def check(self) -> None:
        """Usage errors, before the config is read or anything is connected."""
        self.evidence.check()
        if self.pubkey is not None and self.diff is None:
            raise UsageError("--key PUB verifies the directory of --diff (and --exclude-from): it goes with --diff DIR")
        modes = [m for m, on in zip(MODES, (self.diff is not None, self.override is not None, self.status,
                                            self.install_guard, self.lag), strict=True) if on]
        if len(modes) != 1:
            raise UsageError("pass exactly one of --diff DIR, --override close|open, --status, --install-guard, --lag"
                             + (f" (got {', '.join(modes)})" if modes else ""))
        if self.lag and not self.mapping:
            raise UsageError("--lag needs --mapping NAME (its [gate] NAME.lag_amount / lag_seconds)")
        if (self.exclude_from or self.accept_classes) and self.diff is None:
            raise UsageError("--exclude-from and --accept-classes apply to --diff DIR")
        if self.guard_roles and not self.install_guard:
            raise UsageError("--guard-role goes with --install-guard")
        if (self.reason or self.operator) and self.override is None:
            raise UsageError("--reason and --operator go with --override close|open")


@dataclass
class GateOutcome:
    """The result of one `recon gate`: ``document`` is what ``--json`` prints."""

    mode: str
    exit_code: Exit
    document: dict[str, Any]
    decision: Decision | None = None
    entry: dict[str, Any] | None = None
    warning: str | None = None


def _need_ledger(dsn: str | None, what: str) -> str:
    if not dsn:
        raise UsageError(f"{what} needs the ledger: pass --ledger DSN, set RECON_LEDGER_DSN or [ledger] dsn in recon.toml")
    return dsn


def run_gate(req: GateRequest, config: Config, *, record_evidence: bool = True) -> GateOutcome:
    """Install the guard, report the state, or decide (from a diff or an override) and record the
    decision: in the ledger when there is one, in ``gate_decision.json`` when an output directory is
    given, and as evidence (ledger run, signed manifest, lineage) unless ``record_evidence`` is off."""
    from engine.app import evidence as ev
    from engine.evidence.lineage import new_run_id
    from engine.evidence.manifest import describe_input

    req.check()
    passfile = config.pg_passfile()
    ledger_dsn = req.evidence.ledger_dsn(config)
    if req.install_guard:
        info = install_guard(_need_ledger(ledger_dsn, "--install-guard"), req.guard_roles, passfile=passfile)
        return GateOutcome("install_guard", Exit.OK, info)
    if req.status:
        if not req.mapping:
            raise UsageError("--status needs --mapping NAME")
        dsn = _need_ledger(ledger_dsn, "--status")
        latest = latest_decision(dsn, req.mapping, passfile=passfile)
        per = reason_states(dsn, req.mapping, passfile=passfile)
        is_open = bool(open_reasons(per))
        state = "no decision" if latest is None else ("open" if is_open else "closed")
        return GateOutcome("status", Exit.BREAKER_OPEN if is_open else Exit.OK,
                           {"mapping": req.mapping, "state": state, "latest": latest,
                            "reasons": {r: v["state"] for r, v in per.items()}, "open_reasons": open_reasons(per)})

    run_id = new_run_id()
    inputs: list[dict[str, Any]] = []
    if req.override is not None:
        if not req.mapping:
            raise UsageError("--override needs --mapping NAME")
        state_word = {"close": "closed", "closed": "closed", "open": "open"}.get(req.override.strip().lower())
        if state_word is None:
            raise UsageError(f"--override {req.override!r}: use close or open")
        decision = override(req.mapping, state_word, reason=req.reason, operator=req.operator, run_id=run_id)
        _need_ledger(ledger_dsn, "--override (it is written to the ledger)")
    elif req.lag:
        from engine.app.lag import decide_lag

        assert req.mapping is not None
        decision = decide_lag(config, req.mapping, run_id=run_id)
        lag = decision.lag or {}
        inputs.append(describe_input("stream", {"system": "kafka", "bootstrap": lag.get("bootstrap"),
                                                "topic": lag.get("topic")}))
    else:
        assert req.diff is not None
        accepted = parse_accept_classes(req.accept_classes) if req.accept_classes else None
        verified = verify_inputs(req.diff, req.exclude_from, TrustOptions(ledger_dsn, req.pubkey, passfile))
        decision = decide(req.diff, config, run_id=run_id, mapping=req.mapping, exclude_from=req.exclude_from,
                          accept_classes=accepted)
        assert decision.diff is not None
        decision.diff["verification"] = verified["diff"]
        if decision.exclusion is not None:
            decision.exclusion["source"]["verification"] = verified.get("exclude_from")
        inputs.append(describe_input("diff", {"system": "parquet", "path": str(workspace.DiffOutput(req.diff).differences_path)}))
        src = (decision.exclusion or {}).get("source") or {}
        if src.get("kind") == "explain":  # a repair's plan.json is identified by its digest in the decision
            inputs.append(describe_input("exclusions", {"system": "parquet",
                                                        "path": str(Path(src["dir"]) / src["file"])}))
    entry = None
    guard: str | None = None
    warning: str | None = None
    reasons = dict(decision.reasons)  # without a ledger, the breaker is what this decision says
    if ledger_dsn:
        entry, guard, warning = commit(ledger_dsn, decision, passfile=passfile)
        reasons = {r: v["state"] for r, v in reason_states(ledger_dsn, decision.mapping, passfile=passfile).items()}
    state = breaker_state(reasons)
    exit_code = Exit.BREAKER_OPEN if state == "open" else Exit.OK
    body = decision.body()
    outputs: list[Path] = []
    manifest = req.evidence.manifest
    target_dir = req.out_dir or (manifest.parent if manifest is not None else None)
    if target_dir is not None:
        outputs.append(workspace.write_json(workspace.gate_decision_path(target_dir), {**body, "ledger_entry": entry}))
    # ``state``: the breaker as a whole after this decision (open while any reason is), ``reasons``:
    # each reason's state; the decision's own state is ``decision.state``
    doc: dict[str, Any] = {"mapping": decision.mapping, "state": state,
                           "exit_code": int(exit_code), "decision": body, "reasons": reasons,
                           "open_reasons": [r for r in REASONS if reasons.get(r, "closed") != "closed"],
                           "ledger_entry": entry, "recorded": entry is not None, "sql_guard": guard}
    if record_evidence and (ledger_dsn or manifest):
        doc["evidence"] = ev.record_evidence(
            "gate", body, inputs, outputs, ledger_dsn=ledger_dsn, manifest_path=manifest,
            signing_key=req.evidence.signing_key, config_digest=config.digest, run_id=run_id, passfile=passfile)
    return GateOutcome("decision", exit_code, doc, decision, entry, warning)


def verify_inputs(diff_dir: Path, exclude_from: Path | None, trust: TrustOptions) -> dict[str, dict[str, Any]]:
    """The diff (and the exclusion source) checked against the run that wrote them, before any of
    it is read for a decision: a decision changes the breaker, so without a ledger or a key there is
    none (exit 2), and a file no run recorded is refused (exit 4)."""
    trust.require("recon gate --diff")
    out = {"diff": verify(diff_dir, workspace.DiffOutput(Path(diff_dir)).files(), command="diff",
                          trust=trust).to_dict()}
    if exclude_from is not None:
        rep, exp = workspace.RepairOutput(Path(exclude_from)), workspace.ExplainOutput(Path(exclude_from))
        if rep.exists():  # plan.json is what the gate reads; the rest of the layout when it is there
            files = [f for f in rep.files() if f == rep.plan_path or f.is_file()]
            out["exclude_from"] = verify(exclude_from, files, command="repair", trust=trust).to_dict()
        elif exp.exists():
            out["exclude_from"] = verify(exclude_from, exp.files(), command="explain", trust=trust).to_dict()
    return out
