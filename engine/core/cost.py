"""The data-debt model: what an incident like this one costs, and whether preventing it pays.

Why a model at all: engineers argue for exactly-once delivery and idempotent consumers; finance
decides with money. This module turns what recon *measured* (the commission overpayment explain
priced, the absolute CLV variance the diff found) and a handful of *assumptions* (how long
detection takes, what a day of investigation costs, the probability of another broker failure, the
size and likelihood of a penalty) into the five numbers a decision needs, with every input shown
next to the result so anyone can challenge an assumption rather than the arithmetic.

The formulas (issue 8; ``DAYS_PER_MONTH`` = 30):

- exposure = commission_overpayment + clv_abs_variance × restatement_cost_rate
- cost per incident = exposure + mttd_days × ops_cost_per_day
- expected monthly loss = failure_probability_per_month
  × (cost per incident + penalty_probability_given_failure × penalty)
- one-time prevention = engineering_hours × hourly_rate
- break-even days = one-time prevention ÷ ((expected monthly loss − infra_cost_per_month) ÷ 30),
  "never" when that denominator is not positive (prevention then costs more each month than the
  risk it removes)
- 12-month risk-adjusted ROI = (12 × expected monthly loss − one-time prevention − 12 × infra)
  ÷ (one-time prevention + 12 × infra)

**The defaults are examples, not facts about your organisation.** They come from the incident
story recon was built for (80 engineering hours at 150/hour, 15,000/month for transactional Kafka,
a 2% monthly chance of a cluster failure, a 2,000,000 SEC penalty) plus stated guesses (detection
at the month-end close: 30 days; 5,000/day of investigation and dispute handling; a 50% chance a
failure reaches a filing; restatement work at 5% of the misstated amount). Set your own in the
``[cost]`` table of ``recon.toml`` or with ``recon cost --set key=value``.

Everything is :class:`decimal.Decimal`: money must not pick up binary floating-point noise, and the
unit tests check hand-computed figures exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from engine.core.errors import UsageError

DAYS_PER_MONTH = Decimal(30)
MONTHS = Decimal(12)
MODEL_VERSION = "recon-data-debt/1"

#: Inputs recon measures (from `recon explain` / `recon diff` outputs); `--set` may override them for
#: a what-if, the config may not (a config value would silently shadow every future measurement).
MEASURED_KEYS = ("commission_overpayment", "clv_abs_variance")

#: key → (unit, meaning). Order is the order of the terminal table and the JSON.
KEYS: dict[str, tuple[str, str]] = {
    "commission_overpayment": ("money", "commission overpaid on inflated CLV (measured by recon explain)"),
    "clv_abs_variance": ("money", "absolute CLV variance, Σ|warehouse − Salesforce| (measured by recon diff)"),
    "restatement_cost_rate": ("ratio", "cost of restating, per unit of absolute CLV variance"),
    "mttd_days": ("days", "mean time to detect (and investigate) an incident"),
    "ops_cost_per_day": ("money/day", "detection, investigation and dispute handling per day"),
    "infra_cost_per_month": ("money/month", "running cost of the prevention (e.g. transactional Kafka)"),
    "engineering_hours": ("hours", "one-time engineering effort of the prevention"),
    "hourly_rate": ("money/hour", "loaded engineering rate"),
    "failure_probability_per_month": ("probability", "chance per month of another exactly-once failure"),
    "penalty": ("money", "regulatory penalty for a material filing error"),
    "penalty_probability_given_failure": ("probability", "chance a failure reaches a filing and is penalised"),
}

#: Example defaults (see the module docstring): change them in [cost].
DEFAULTS: dict[str, Decimal] = {
    "restatement_cost_rate": Decimal("0.05"),
    "mttd_days": Decimal("30"),
    "ops_cost_per_day": Decimal("5000"),
    "infra_cost_per_month": Decimal("15000"),
    "engineering_hours": Decimal("80"),
    "hourly_rate": Decimal("150"),
    "failure_probability_per_month": Decimal("0.02"),
    "penalty": Decimal("2000000"),
    "penalty_probability_given_failure": Decimal("0.5"),
}

_PROBABILITIES = ("failure_probability_per_month", "penalty_probability_given_failure")


@dataclass(frozen=True)
class CostInputs:
    """Every input of the model. Validated on construction: a bad value raises UsageError naming
    the key and the fix, so nothing downstream has to re-check."""

    commission_overpayment: Decimal
    clv_abs_variance: Decimal
    restatement_cost_rate: Decimal = DEFAULTS["restatement_cost_rate"]
    mttd_days: Decimal = DEFAULTS["mttd_days"]
    ops_cost_per_day: Decimal = DEFAULTS["ops_cost_per_day"]
    infra_cost_per_month: Decimal = DEFAULTS["infra_cost_per_month"]
    engineering_hours: Decimal = DEFAULTS["engineering_hours"]
    hourly_rate: Decimal = DEFAULTS["hourly_rate"]
    failure_probability_per_month: Decimal = DEFAULTS["failure_probability_per_month"]
    penalty: Decimal = DEFAULTS["penalty"]
    penalty_probability_given_failure: Decimal = DEFAULTS["penalty_probability_given_failure"]

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = check_value(f.name, getattr(self, f.name))
            if problem:
                raise UsageError(f"cost input {problem}")

    def as_dict(self) -> dict[str, Decimal]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_value(key: str, v: Any) -> str | None:
    """Why `v` is not acceptable for `key` (a one-line "key = value …: fix"), or None when it is."""
    example = DEFAULTS.get(key, Decimal("0"))
    if not isinstance(v, Decimal) or not v.is_finite():
        return f"{key} = {v!r} must be a finite decimal number, e.g. {key} = {example}"
    if v < 0:
        return f"{key} = {v} must not be negative: set it to 0 or more, e.g. {key} = {example}"
    if key in _PROBABILITIES and v > 1:
        return f"{key} = {v} is a probability: set it between 0 and 1, e.g. {key} = {example}"
    return None


# -- the formulas, one function each so each can be tested on its own ---------------------------------
def exposure(commission_overpayment: Decimal, clv_abs_variance: Decimal, restatement_cost_rate: Decimal) -> Decimal:
    """Measured money at risk in one incident: overpaid commission plus the cost of restating the CLV."""
    return commission_overpayment + clv_abs_variance * restatement_cost_rate


def cost_per_incident(exposure_: Decimal, mttd_days: Decimal, ops_cost_per_day: Decimal) -> Decimal:
    """Exposure plus the cost of the days it takes to notice and investigate."""
    return exposure_ + mttd_days * ops_cost_per_day


def expected_monthly_loss(failure_probability_per_month: Decimal, cost_per_incident_: Decimal,
                          penalty_probability_given_failure: Decimal, penalty: Decimal) -> Decimal:
    """Risk-weighted loss per month: an incident is not certain, and neither is the penalty."""
    return failure_probability_per_month * (cost_per_incident_ + penalty_probability_given_failure * penalty)


def one_time_prevention(engineering_hours: Decimal, hourly_rate: Decimal) -> Decimal:
    """The engineering cost of idempotent consumers and exactly-once configuration."""
    return engineering_hours * hourly_rate


def break_even_days(one_time_prevention_: Decimal, expected_monthly_loss_: Decimal,
                    infra_cost_per_month: Decimal) -> Decimal | None:
    """Days until the avoided loss, net of the prevention's running cost, repays the one-time cost.

    None means "never": the running cost is at least the expected loss it removes, so the net daily
    saving is not positive and no number of days repays anything.
    """
    daily_net = (expected_monthly_loss_ - infra_cost_per_month) / DAYS_PER_MONTH
    if daily_net <= 0:
        return None
    return one_time_prevention_ / daily_net


def roi_12_months(expected_monthly_loss_: Decimal, one_time_prevention_: Decimal,
                  infra_cost_per_month: Decimal) -> Decimal | None:
    """12-month risk-adjusted return on the prevention, as a ratio (0.25 = 25%).

    None when the prevention costs nothing at all (one-time and running cost both zero): a return
    on no investment is undefined, not infinite.
    """
    invested = one_time_prevention_ + MONTHS * infra_cost_per_month
    if invested == 0:
        return None
    return (MONTHS * expected_monthly_loss_ - one_time_prevention_ - MONTHS * infra_cost_per_month) / invested


@dataclass(frozen=True)
class CostResult:
    """The model's outputs, exact (round only for display: see :func:`to_json`)."""

    exposure: Decimal
    cost_per_incident: Decimal
    expected_monthly_loss: Decimal
    one_time_prevention: Decimal
    break_even_days: Decimal | None
    roi_12_months: Decimal | None


def model(i: CostInputs) -> CostResult:
    """All five outputs from one set of inputs."""
    exp = exposure(i.commission_overpayment, i.clv_abs_variance, i.restatement_cost_rate)
    cpi = cost_per_incident(exp, i.mttd_days, i.ops_cost_per_day)
    eml = expected_monthly_loss(i.failure_probability_per_month, cpi, i.penalty_probability_given_failure, i.penalty)
    otp = one_time_prevention(i.engineering_hours, i.hourly_rate)
    return CostResult(
        exposure=exp, cost_per_incident=cpi, expected_monthly_loss=eml, one_time_prevention=otp,
        break_even_days=break_even_days(otp, eml, i.infra_cost_per_month),
        roi_12_months=roi_12_months(eml, otp, i.infra_cost_per_month),
    )


# -- inputs: parsing and provenance ------------------------------------------------------------------
def parse_value(key: str, value: Any, where: str) -> Decimal:
    """One config/`--set` value → Decimal, or a UsageError naming where, the key and the fix."""
    if key not in KEYS:
        raise UsageError(f"{where}: unknown cost key {key!r}; known keys: {', '.join(KEYS)}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise UsageError(f"{where}: {key} = {value!r} must be a number, e.g. {key} = {DEFAULTS.get(key, '0')}")
    try:
        d = Decimal(str(value).strip().replace("_", ""))
    except InvalidOperation:
        raise UsageError(f"{where}: {key} = {value!r} is not a number, e.g. {key} = {DEFAULTS.get(key, '0')}") from None
    if not d.is_finite():
        raise UsageError(f"{where}: {key} = {value!r} must be a finite number")
    return d


def parse_sets(items: list[str] | None) -> dict[str, Decimal]:
    """`--set key=value` options → values (later ones win)."""
    out: dict[str, Decimal] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not key or not val.strip():
            raise UsageError(f"malformed --set {item!r}: use KEY=VALUE, e.g. --set mttd_days=7")
        out[key] = parse_value(key, val, "--set")
    return out


@dataclass(frozen=True)
class Measured:
    """What recon measured, and where each figure came from (paths as given)."""

    commission_overpayment: Decimal | None = None
    clv_abs_variance: Decimal | None = None
    column: str | None = None
    explain: str | None = None
    diff: str | None = None
    overpayment_from: str | None = None
    variance_from: str | None = None


def build_inputs(section: dict[str, Any], sets: dict[str, Decimal], measured: Measured,
                 where: str = "configuration") -> tuple[CostInputs, dict[str, str]]:
    """Merge defaults < [cost] config < measurement < --set, and say where each value came from.

    Measured keys in the config are refused: a number frozen in a file would silently shadow every
    future measurement. Use --set for a what-if instead.
    """
    values: dict[str, Decimal] = {}
    sources: dict[str, str] = {}
    for k, v in DEFAULTS.items():
        values[k], sources[k] = v, "example default"
    for k, v in section.items():
        if k in MEASURED_KEYS:
            raise UsageError(f"{where}: [cost] {k} is measured by recon, not configured: remove it, "
                             f"or use `recon cost --set {k}=…` for a what-if")
        values[k], sources[k] = parse_value(k, v, f"{where}: [cost]"), "config [cost]"
    if measured.commission_overpayment is not None:
        values["commission_overpayment"], sources["commission_overpayment"] = measured.commission_overpayment, "explain"
    if measured.clv_abs_variance is not None:
        src = "diff" if measured.variance_from and "summary.json" in measured.variance_from else "explain findings"
        values["clv_abs_variance"], sources["clv_abs_variance"] = measured.clv_abs_variance, src
    for k, v in sets.items():
        values[k], sources[k] = v, "--set"
    for k, v in values.items():
        problem = check_value(k, v)
        if problem:
            origin = f"{where}: [cost]" if sources[k] == "config [cost]" else sources[k]
            raise UsageError(f"{origin}: {problem}")
    for k, hint in (("commission_overpayment", "--explain DIR (the --out of `recon explain`)"),
                    ("clv_abs_variance", "--diff DIR (the --out of `recon diff`) or --explain DIR")):
        if k not in values:
            raise UsageError(f"no measured {k.replace('_', ' ')}: pass {hint}, or --set {k}=AMOUNT for a what-if")
    return CostInputs(**values), {k: sources[k] for k in KEYS}


# -- presentation ------------------------------------------------------------------------------------
def money(d: Decimal) -> Decimal:
    return d.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def days_text(d: Decimal | None) -> str:
    return "never" if d is None else str(d.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def ratio_text(d: Decimal | None) -> str | None:
    return None if d is None else str(d.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


FORMULAS = {
    "exposure": "commission_overpayment + clv_abs_variance × restatement_cost_rate",
    "cost_per_incident": "exposure + mttd_days × ops_cost_per_day",
    "expected_monthly_loss": "failure_probability_per_month × (cost_per_incident + "
                             "penalty_probability_given_failure × penalty)",
    "one_time_prevention": "engineering_hours × hourly_rate",
    "break_even_days": "one_time_prevention ÷ ((expected_monthly_loss − infra_cost_per_month) ÷ 30); "
                       "never when that denominator is not positive",
    "roi_12_months": "(12 × expected_monthly_loss − one_time_prevention − 12 × infra_cost_per_month) ÷ "
                     "(one_time_prevention + 12 × infra_cost_per_month)",
}


def to_json(i: CostInputs, r: CostResult, sources: dict[str, str] | None = None,
            measured: Measured | None = None) -> dict[str, Any]:
    """The `recon cost --json` document (and the demo's cost.json): decimals as strings, money to cents."""
    src = sources or {}
    return {
        "model": MODEL_VERSION,
        "defaults_are_examples": True,
        "inputs": {k: {"value": str(v), "source": src.get(k, "given"), "unit": KEYS[k][0], "meaning": KEYS[k][1]}
                   for k, v in i.as_dict().items()},
        "measured": {
            "explain": measured.explain if measured else None, "diff": measured.diff if measured else None,
            "column": measured.column if measured else None,
            "commission_overpayment_from": measured.overpayment_from if measured else None,
            "clv_abs_variance_from": measured.variance_from if measured else None,
        },
        "results": {
            "exposure": str(money(r.exposure)),
            "cost_per_incident": str(money(r.cost_per_incident)),
            "expected_monthly_loss": str(money(r.expected_monthly_loss)),
            "one_time_prevention": str(money(r.one_time_prevention)),
            "break_even_days": days_text(r.break_even_days),
            "roi_12_months": ratio_text(r.roi_12_months),
        },
        "formulas": dict(FORMULAS),
    }


def inputs_from_json(doc: dict[str, Any], where: str = "cost.json") -> CostInputs:
    """Rebuild the inputs from a :func:`to_json` document (the report recomputes, never trusts rounding)."""
    try:
        raw = {k: v["value"] for k, v in (doc.get("inputs") or {}).items() if k in KEYS}
    except (TypeError, KeyError):
        raise UsageError(f"{where}: inputs must map each key to {{\"value\": …}}: regenerate it with `recon cost --json`") from None
    missing = [k for k in MEASURED_KEYS if k not in raw]
    if missing:
        raise UsageError(f"{where}: inputs lack {', '.join(missing)}: regenerate it with `recon cost --json`")
    return CostInputs(**{k: parse_value(k, v, where) for k, v in raw.items()})
