"""The circuit breaker's policy: thresholds, the exact comparison, a decision, the exclusion
classes, and the rule that an older diff cannot close a breaker a newer one opened.

Pure: no database, no files. Why the breaker is a decision log, how exclusions work and what the
SQL guard does are told in :mod:`engine.app.gate` (the use case) and :mod:`engine.store.breaker`
(the ledger side)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from engine.core import classes
from engine.core.classes import Repair
from engine.core.errors import UsageError

DEFAULT_THRESHOLD = 0.005
POLICY_VERSION = "recon-gate-exclusion/v1"
# the exclusion policy by class, derived from engine.core.classes (the functions below read that
# list when they run; these names are for callers)
EXCLUDABLE_CLASSES = classes.excludable()
DEFAULT_ACCEPTED = classes.accepted_by_default()
REPAIRED_CLASSES = classes.with_repair(Repair.CORRECT)
STATES = ("open", "closed")
#: why the breaker can be open; each reason has its own state (its latest decision), and the breaker
#: is closed only when every reason is. ``variance``: a diff's ratios (and operators' overrides);
#: ``lag``: money in events the warehouse's consumer has not applied yet. The SQL guard lists the
#: same names (:mod:`engine.store.breaker`).
REASONS = ("variance", "lag")
MAX_LISTED = 10_000  # keys listed per decision; beyond that the decision says how many were left out




@dataclass(frozen=True)
class Thresholds:
    """Limits for one mapping. column: the gated amount column (source name), None = the diff's only one."""

    variance_ratio: float = DEFAULT_THRESHOLD
    amount_variance_ratio: float = DEFAULT_THRESHOLD
    column: str | None = None


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
    #: the reasons this decision decides, each with its new state (``state`` is theirs): a diff
    #: decides ``variance``, a lag check ``lag``; the other reasons keep their latest decision
    reasons: dict[str, str] = field(default_factory=dict)
    #: kind "lag": what was in flight (offsets per partition, amount, oldest event)
    lag: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.reasons:  # a diff or an override decides variance unless told otherwise
            self.reasons = {"variance": self.state}

    @property
    def is_open(self) -> bool:
        return self.state != "closed"

    def body(self) -> dict[str, Any]:
        """The ledger body (``mapping`` and ``run_id`` are indexed columns of the ledger table)."""
        d = asdict(self)
        d["policy_version"] = POLICY_VERSION if self.exclusion else None
        return d


@dataclass(frozen=True)
class LagThresholds:
    """``[gate] NAME.lag_amount`` (exact decimal) and ``lag_seconds``; None: that limit is not set."""

    amount: Decimal | None = None
    seconds: float | None = None
    offsets: str = "kafka"  # whose offsets say what is applied: "kafka" (the group's commits) or "postgres"
    table: str | None = None  # lag_offsets = "postgres": the events table `recon consume --table` writes


def evaluate_lag(amount: Decimal, seconds: float | None, limits: LagThresholds) -> tuple[str, list[str]]:
    """The ``lag`` reason's state: ("open"|"closed", the limits exceeded). Strictly above opens, as
    for the ratios; the amount is compared exactly (Decimal against Decimal, never a float)."""
    tripped = []
    if limits.amount is not None and amount > limits.amount:
        tripped.append("lag_amount")
    if limits.seconds is not None and seconds is not None and exact(seconds) > exact(limits.seconds):
        tripped.append("lag_seconds")
    return ("open" if tripped else "closed"), tripped


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_accept_classes(text: str | None) -> tuple[str, ...]:
    """``--accept-classes``: the classes an exclusion may leave out (default: those accepted by
    default); a class repair corrects is refused, it is fixed, not waived."""
    if not text:
        return classes.accepted_by_default()
    excludable = classes.excludable()
    out = []
    for c in (x.strip() for x in text.split(",")):
        if not c:
            continue
        if classes.repair_of(c) is Repair.CORRECT:
            raise UsageError(f"--accept-classes {c}: records of this class are corrected by `recon repair`, "
                             "never excluded from the gate")
        if c not in excludable:
            what = "unknown class" if classes.get(c) is None else "class never excluded from the gate:"
            raise UsageError(f"--accept-classes: {what} {c!r} (excludable: {', '.join(excludable)})")
        if c not in out:
            out.append(c)
    if not out:
        raise UsageError(f"--accept-classes is empty: name {' and/or '.join(excludable)}")
    return tuple(out)


def check_not_stale(decision: Decision, latest: dict[str, Any] | None) -> None:
    """A diff read before the diff that opened the breaker cannot close it (the same diff can, e.g.
    with the exclusion policy applied: the data did not change, the accepted remainder did)."""
    if decision.kind != "diff" or decision.state != "closed" or not latest or latest.get("state") == "closed":
        return
    # fail closed: a time nobody knows counts as stale. The opening decision's own time stands in
    # for its diff's when that is unknown (an override opened it, or an old diff without times).
    prev = (_parse_time(((latest.get("body") or {}).get("diff") or {}).get("extracted_at"))
            or _parse_time(latest.get("recorded_at")))
    now = _parse_time((decision.diff or {}).get("extracted_at"))
    if now is None:
        raise UsageError(f"the diff in {(decision.diff or {}).get('dir')} does not say when both sides were read "
                         f"(a CSV or Parquet file records no extraction time unless `recon snapshot` wrote its "
                         f"sidecar), so it cannot close the breaker decision seq {latest['seq']} opened: diff "
                         f"sides read from their systems or from `recon snapshot` files, or close it with "
                         f"`recon gate --override closed --mapping {decision.mapping} --reason … --operator …`")
    if prev is None:
        raise UsageError(f"the decision that opened the breaker (seq {latest['seq']}) has no time to compare "
                         f"the diff with: close it with `recon gate --override closed --mapping {decision.mapping} "
                         "--reason … --operator …`")
    if now < prev:
        raise UsageError(f"the diff in {(decision.diff or {}).get('dir')} read its data at {now.isoformat()}, "
                         f"before the diff that opened the breaker (decision seq {latest['seq']}, "
                         f"{prev.isoformat()}): run a new `recon diff` to close it")


