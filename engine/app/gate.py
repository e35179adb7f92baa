"""The circuit breaker: stop the financial aggregation while a mapping's variance is too high.

Why this shape:

* **A decision log, not a flag.** Every decision is a row of the append-only, hash-chained ledger
  table ``recon_audit.gate_decisions`` (mapping, state, ratios, thresholds, the digest of the diff it
  was made from, the reason, the operator of an override, the run id). The breaker's state is the
  *latest* decision for the mapping; nothing is ever updated, so "who closed it, when, from which
  evidence" is always answerable and cannot be rewritten without breaking the chain.
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

After ``recon repair --apply`` the warehouse still differs from Salesforce for two kinds of record:
``stale_salesforce`` (Salesforce itself is behind the event stream; the warehouse is right, and the
repair issued an action list to the record owners) and ``unexplained`` (left alone for a human).
``recon gate --diff DIR --exclude-from REPAIR_OR_EXPLAIN_DIR`` recomputes both ratios without the
records that output classified in an *accepted* class:

1. Accepted classes: ``stale_salesforce`` by default; ``unexplained`` only when named explicitly
   (``--accept-classes stale_salesforce,unexplained``). The classes repair corrects
   (``duplicate_inflation``, ``missing_events``, ``warehouse_only_drift``, ``missing_in_warehouse``)
   can never be excluded: they are fixed, not waived.
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
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from engine.config import Config
from engine.core.errors import UsageError
from engine.core.normalize import parse_decimal

DEFAULT_THRESHOLD = 0.005
SQLSTATE_OPEN = "RC003"
GUARD_VERSION = 1
GUARD_MARKER = f"recon circuit breaker guard v{GUARD_VERSION}"
POLICY_VERSION = "recon-gate-exclusion/v1"
EXCLUDABLE_CLASSES = ("stale_salesforce", "unexplained")
DEFAULT_ACCEPTED = ("stale_salesforce",)
REPAIRED_CLASSES = ("duplicate_inflation", "missing_events", "warehouse_only_drift", "missing_in_warehouse")
STATES = ("open", "closed")
MAX_LISTED = 10_000  # keys listed per decision; beyond that the decision says how many were left out


# -- thresholds and the pure decision -------------------------------------------------------------
@dataclass(frozen=True)
class Thresholds:
    """Limits for one mapping. column: the gated amount column (source name), None = the diff's only one."""

    variance_ratio: float = DEFAULT_THRESHOLD
    amount_variance_ratio: float = DEFAULT_THRESHOLD
    column: str | None = None


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
    unknown = set(merged) - {"variance_ratio", "amount_variance_ratio", "column"}
    if unknown:
        raise UsageError(f"{config.where}: [gate] {mapping}: unknown key(s) {', '.join(sorted(unknown))} "
                         "(known: variance_ratio, amount_variance_ratio, column)")
    col = merged.get("column")
    if col is not None and (not isinstance(col, str) or not col):
        raise UsageError(f"{config.where}: [gate] {mapping}.column must be a column name")
    return Thresholds(
        variance_ratio=_threshold(merged.get("variance_ratio", DEFAULT_THRESHOLD),
                                  f"{config.where}: [gate] {mapping}.variance_ratio"),
        amount_variance_ratio=_threshold(merged.get("amount_variance_ratio", DEFAULT_THRESHOLD),
                                         f"{config.where}: [gate] {mapping}.amount_variance_ratio"),
        column=col)


def exact(x: float | int | Decimal | Fraction) -> Fraction:
    """A number as the fraction a person reads: floats by their shortest decimal spelling."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, (int, Decimal)):
        return Fraction(x)
    return Fraction(repr(float(x)))


def _above(ratio: float | Fraction | None, limit: float) -> bool:
    """Strictly above; an undefined ratio (NaN) fails closed, infinity is above everything."""
    if ratio is None:
        return False
    if isinstance(ratio, float):
        if math.isnan(ratio):
            return True
        if math.isinf(ratio):
            return ratio > 0
    return exact(ratio) > exact(limit)


def evaluate(variance_ratio: float | Fraction, amount_variance_ratio: float | Fraction | None,
             thresholds: Thresholds) -> tuple[str, list[str]]:
    """The breaker state for two ratios: ("open"|"closed", names of the ratios above their limit).

    ``amount_variance_ratio`` None means the gated column has no amount (not numeric): only the
    record ratio applies. A negative ratio is malformed input.
    """
    for name, r in (("variance_ratio", variance_ratio), ("amount_variance_ratio", amount_variance_ratio)):
        if r is not None and not (isinstance(r, float) and math.isnan(r)) and r < 0:
            raise UsageError(f"{name} {r} is negative: the diff summary is malformed")
    tripped = []
    if _above(variance_ratio, thresholds.variance_ratio):
        tripped.append("variance_ratio")
    if _above(amount_variance_ratio, thresholds.amount_variance_ratio):
        tripped.append("amount_variance_ratio")
    return ("open" if tripped else "closed"), tripped


def _num(r: float | Fraction | None) -> float | None:
    if r is None:
        return None
    return float(r)


def _pct(r: float | Fraction | None) -> str:
    if r is None:
        return "n/a"
    f = float(r)
    return f"{f:.4%}" if math.isfinite(f) else str(f)


@dataclass
class Decision:
    """One gate decision, as written to ``recon_audit.gate_decisions``.

    kind: "diff" (computed from a diff directory) or "override" (operator and reason required).
    ratios / raw_ratios: after and before exclusions (equal without --exclude-from).
    """

    mapping: str
    state: str
    kind: str
    reason: str
    run_id: str
    column: str | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    raw_ratios: dict[str, float | None] = field(default_factory=dict)
    tripped: list[str] = field(default_factory=list)
    diff: dict[str, Any] | None = None
    exclusion: dict[str, Any] | None = None
    operator: str | None = None
    previous: dict[str, Any] | None = None

    @property
    def is_open(self) -> bool:
        return self.state != "closed"

    def body(self) -> dict[str, Any]:
        """The ledger body (``mapping`` and ``run_id`` are indexed columns of the ledger table)."""
        d = asdict(self)
        d["policy_version"] = POLICY_VERSION if self.exclusion else None
        return d


# -- reading a diff directory ---------------------------------------------------------------------
def _sha256(path: Path) -> str:
    from engine.evidence.manifest import file_digest

    return file_digest(path)


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


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
        """When the diff read its data: the earlier of the two sides' extraction times."""
        times = [_parse_time((self.summary.get(side) or {}).get("extract", {}).get(k))
                 for side, k in (("source", "extracted_at"), ("target", "server_time"))]
        known = [t for t in times if t is not None]
        return min(known) if known else None

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


def load_exclusion_source(directory: Path) -> ExclusionSource:
    """A repair output (``plan.json`` with its action list) or an explain output (``findings.parquet``)."""
    d = Path(directory)
    plan = d / "plan.json"
    if plan.is_file():
        try:
            p = json.loads(plan.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{plan} is not valid JSON") from None
        records = [{**r, "class": "stale_salesforce"} for r in p.get("action_list") or []]
        records += [{**r, "class": "unexplained"} for r in p.get("unexplained") or []]
        return ExclusionSource("repair", d, plan, _sha256(plan), p.get("mapping"), p.get("column"), records)
    findings, exp = d / "findings.parquet", d / "explain.json"
    if findings.is_file() and exp.is_file():
        import polars as pl

        f = pl.read_parquet(findings)
        try:
            e = json.loads(exp.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{exp} is not valid JSON") from None
        records = [{"Id": r["Id"], "class": r["class"], "kind": r["kind"], "owner_id": r["owner_id"],
                    "salesforce_value": r["salesforce_value"], "warehouse_value": r["warehouse_value"],
                    "stream_value": r["dedup_stream_value"]} for r in f.iter_rows(named=True)]
        mapping = None
        diff_summary = Path(str(e.get("diff") or "")) / "summary.json"
        if diff_summary.is_file():
            try:
                mapping = json.loads(diff_summary.read_text()).get("mapping")
            except ValueError:
                mapping = None
        return ExclusionSource("explain", d, findings, _sha256(findings), mapping, e.get("column"), records)
    raise UsageError(f"--exclude-from {d}: neither a repair output (plan.json) nor an explain output "
                     "(explain.json and findings.parquet)")


def parse_accept_classes(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_ACCEPTED
    out = []
    for c in (x.strip() for x in text.split(",")):
        if not c:
            continue
        if c in REPAIRED_CLASSES:
            raise UsageError(f"--accept-classes {c}: records of this class are corrected by `recon repair`, "
                             "never excluded from the gate")
        if c not in EXCLUDABLE_CLASSES:
            raise UsageError(f"--accept-classes: unknown class {c!r} (excludable: {', '.join(EXCLUDABLE_CLASSES)})")
        if c not in out:
            out.append(c)
    if not out:
        raise UsageError("--accept-classes is empty: name stale_salesforce and/or unexplained")
    return tuple(out)


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
    src_removed = Decimal(0)
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
                    src_removed += abs(s)
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
            # Σ|source| is in summaries since they carry source_abs_total; older ones: abs_variance / ratio
            total = _dec(col.get("source_abs_total")) or Decimal(abs_v) / Decimal(repr(raw_amount))
            rest = total - src_removed
            amount = Fraction(new_abs) / Fraction(rest) if rest > 0 else float("inf")
    return ExclusionResult(excluded, refused, resolved, variance, amount)


# -- deciding -------------------------------------------------------------------------------------
def decide(diff_dir: Path, config: Config, *, run_id: str, mapping: str | None = None,
           exclude_from: Path | None = None, accept_classes: tuple[str, ...] | None = None) -> Decision:
    """A decision from a diff directory (and optionally an exclusion source). Pure: writes nothing."""
    diff = DiffInput.read(diff_dir)
    diff_mapping = diff.summary.get("mapping")
    if mapping and diff_mapping and mapping != diff_mapping:
        raise UsageError(f"the diff in {diff_dir} was run for mapping {diff_mapping!r}, not {mapping!r}")
    mapping = mapping or diff_mapping
    if not mapping:
        raise UsageError(f"the diff in {diff_dir} was run without a mapping: pass --mapping NAME (the breaker "
                         "is kept per mapping)")
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
        accepted = accept_classes or DEFAULT_ACCEPTED
        if src.mapping and src.mapping != mapping:
            raise UsageError(f"--exclude-from {exclude_from} classified mapping {src.mapping!r}, not {mapping!r}")
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
    return Decision(mapping=mapping, state=state, kind="override", reason=str(reason).strip(), run_id=run_id,
                    operator=str(operator).strip())


# -- the ledger side --------------------------------------------------------------------------------
def latest_decision(dsn: str, mapping: str) -> dict[str, Any] | None:
    """The latest decision for a mapping: {seq, recorded_at, state, body}, or None."""
    from engine.store.ledger import Ledger, _db_error

    with Ledger(dsn) as led:
        try:
            row = led.conn.execute(
                "SELECT seq, recorded_at, canonical FROM recon_audit.gate_decisions WHERE mapping = %s "
                "ORDER BY seq DESC LIMIT 1", (mapping,)).fetchone()
        except psycopg.Error as exc:
            raise _db_error(exc, dsn, "read") from None
    if row is None:
        return None
    body = json.loads(row[2])
    return {"seq": int(row[0]), "recorded_at": row[1].isoformat(), "state": body.get("state"), "body": body}


def check_not_stale(decision: Decision, latest: dict[str, Any] | None) -> None:
    """A diff read before the diff that opened the breaker cannot close it (the same diff can, e.g.
    with the exclusion policy applied: the data did not change, the accepted remainder did)."""
    if decision.kind != "diff" or decision.state != "closed" or not latest or latest.get("state") == "closed":
        return
    prev = _parse_time(((latest.get("body") or {}).get("diff") or {}).get("extracted_at"))
    now = _parse_time((decision.diff or {}).get("extracted_at"))
    if prev is not None and now is not None and now < prev:
        raise UsageError(f"the diff in {(decision.diff or {}).get('dir')} read its data at {now.isoformat()}, "
                         f"before the diff that opened the breaker (decision seq {latest['seq']}, "
                         f"{prev.isoformat()}): run a new `recon diff` to close it")


def record_decision(dsn: str, decision: Decision, latest: dict[str, Any] | None) -> dict[str, Any]:
    """Append the decision to ``recon_audit.gate_decisions``; returns the ledger entry."""
    from engine.store.ledger import Ledger

    if latest is not None:
        decision.previous = {"seq": latest["seq"], "state": latest.get("state"), "recorded_at": latest["recorded_at"]}
    with Ledger(dsn) as led:
        entry = led.append("gate_decisions", decision.body())
    return entry.to_dict()


def _guard_sql() -> list[sql.Composable]:
    fn = sql.SQL("recon_audit.assert_circuit_closed(text)")
    st = sql.SQL("recon_audit.circuit_state(text)")
    return [
        sql.SQL("CREATE INDEX IF NOT EXISTS gate_decisions_mapping_seq ON recon_audit.gate_decisions (mapping, seq DESC)"),
        sql.SQL("""CREATE OR REPLACE FUNCTION recon_audit.circuit_state(p_mapping text)
RETURNS TABLE (state text, seq bigint, recorded_at timestamptz, kind text, reason text, operator text, run_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT COALESCE(g.body ->> 'state', 'open'), g.seq, g.recorded_at, g.body ->> 'kind', g.body ->> 'reason',
         g.body ->> 'operator', g.run_id
    FROM recon_audit.gate_decisions g
   WHERE g.mapping = p_mapping
   ORDER BY g.seq DESC
   LIMIT 1
$f$"""),
        sql.SQL("""CREATE OR REPLACE FUNCTION recon_audit.assert_circuit_closed(p_mapping text)
RETURNS void LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  d record;
BEGIN
  IF p_mapping IS NULL THEN
    RAISE EXCEPTION 'recon_audit.assert_circuit_closed: the mapping name is NULL'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  SELECT * INTO d FROM recon_audit.circuit_state(p_mapping);
  -- no decision yet: nothing to halt; any state but 'closed' fails closed
  IF FOUND AND d.state IS DISTINCT FROM 'closed' THEN
    RAISE EXCEPTION 'recon circuit breaker for mapping "%" is open since % (gate decision seq %): %',
        p_mapping, d.recorded_at, d.seq, d.reason
      USING ERRCODE = '{sqlstate}',
            DETAIL = format('decision kind %s, run %s%s', d.kind, d.run_id,
                            CASE WHEN d.operator IS NOT NULL THEN ', operator ' || d.operator ELSE '' END),
            HINT = 'repair, run a new diff and `recon gate --diff DIR`, or `recon gate --override close '
                   '--reason TEXT --operator NAME`';
  END IF;
END $f$""".replace("{sqlstate}", SQLSTATE_OPEN)),
        sql.SQL("COMMENT ON FUNCTION {} IS {}").format(fn, sql.Literal(
            f"{GUARD_MARKER}: raises SQLSTATE {SQLSTATE_OPEN} while the latest recon gate decision for the "
            "mapping is open")),
        sql.SQL("COMMENT ON FUNCTION {} IS {}").format(st, sql.Literal(
            f"{GUARD_MARKER}: the latest recon gate decision for a mapping")),
        sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(st),
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO PUBLIC").format(fn),
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO recon_audit_writer, recon_audit_reader").format(st),
    ]


def guard_installed(dsn: str) -> bool:
    """True when the current version of the guard function is in the ledger database."""
    from engine.store.ledger import Ledger

    with Ledger(dsn) as led:
        row = led.conn.execute(
            "SELECT obj_description(to_regprocedure('recon_audit.assert_circuit_closed(text)'), 'pg_proc')"
        ).fetchone()
    return bool(row and row[0] and str(row[0]).startswith(GUARD_MARKER))


def install_guard(dsn: str, grant_to: tuple[str, ...] = ()) -> dict[str, Any]:
    """Create ``recon_audit.assert_circuit_closed`` (and ``circuit_state``) as ``recon_audit_owner``,
    the way ``Ledger.init`` creates the ledger: in one transaction, through a SET-only membership the
    connecting role grants itself and revokes again. Idempotent. ``grant_to``: roles that will call
    the guard (they get ``recon_audit_reader``, which carries USAGE on the schema)."""
    from engine.store.ledger import OWNER_ROLE, READER_ROLE, Ledger, _db_error

    with Ledger(dsn) as led:
        conn = led.conn
        try:
            with conn.transaction():
                if conn.execute("SELECT to_regclass('recon_audit.gate_decisions')").fetchone()[0] is None:  # type: ignore[index]
                    raise UsageError(f"no ledger at {led.where}: run `recon ledger init` first")
                me, is_super = conn.execute(
                    "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()  # type: ignore[misc]
                if not is_super:
                    conn.execute(sql.SQL("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(
                        sql.Identifier(OWNER_ROLE), sql.Identifier(me)))
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER_ROLE)))
                for stmt in _guard_sql():
                    conn.execute(stmt)
                conn.execute("RESET ROLE")
                if not is_super:
                    conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(OWNER_ROLE), sql.Identifier(me)))
                for role in grant_to:
                    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(READER_ROLE), sql.Identifier(role)))
        except psycopg.errors.InsufficientPrivilege as exc:
            first = (str(exc).splitlines() or [""])[0]
            raise UsageError(f"cannot install the circuit-breaker guard in {led.where}: {first} (run `recon gate "
                             "--install-guard` once as the role that ran `recon ledger init`)") from None
        except psycopg.Error as exc:
            raise _db_error(exc, dsn, "install the guard in") from None
    return {"function": "recon_audit.assert_circuit_closed(text)", "state_function": "recon_audit.circuit_state(text)",
            "sqlstate": SQLSTATE_OPEN, "owner": OWNER_ROLE, "version": GUARD_VERSION,
            "granted_to": list(grant_to)}


def ensure_guard(dsn: str) -> bool:
    """Install the guard unless the current version is there; True when it was (re)installed."""
    if guard_installed(dsn):
        return False
    install_guard(dsn)
    return True


def commit(dsn: str, decision: Decision) -> tuple[dict[str, Any], str, str | None]:
    """Record a decision as the breaker's new state: refuse a stale diff, append it to the ledger,
    then make sure the SQL guard exists. The decision is recorded first: a scheduler relies on it
    even if the guard cannot be installed. Returns the ledger entry, the guard's status and, when the
    guard could not be installed, the reason (a warning for the caller to show)."""
    latest = latest_decision(dsn, decision.mapping)
    check_not_stale(decision, latest)
    entry = record_decision(dsn, decision, latest)
    try:
        return entry, ("installed now" if ensure_guard(dsn) else "installed"), None
    except UsageError as exc:
        return entry, f"not installed: {exc}", str(exc)
