"""Absolute tolerances (``--tolerance COL=ABS``, a mapping's ``tolerance``): what a valid one is, and
what it means at a column's scale. Standard library only: the CLI and the config parse tolerances
before ``recon diff`` starts its early PostgreSQL read, which must not wait for Polars to import.

A tolerance is any finite number, 0 or more, kept exactly as written (never through a float). At a
decimal column of scale ``s`` it is rounded down to ``s`` places (0.011 at scale 2 lets 0.01 pass,
not 0.011), and one larger than any difference two values can have is that largest difference, so a
huge tolerance absorbs every difference instead of overflowing the comparison.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal, InvalidOperation, localcontext


def parse_tolerance(value: object) -> Decimal:
    """A tolerance from its text or TOML value; ValueError naming the value when it is not a finite,
    non-negative number."""
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{str(value)!r} is not a number") from None
    if not d.is_finite():
        raise ValueError(f"{str(value)!r} is not a finite number")
    if d < 0:
        raise ValueError(f"{str(value)!r} is negative: a tolerance is the largest absolute difference to let pass")
    return d


def tolerance_units(tol: Decimal, scale: int, limit: int) -> int:
    """The tolerance in units of the scale's last place (rounded down), at most ``limit`` (the
    largest difference the column's representation can hold)."""
    with localcontext() as ctx:
        ctx.prec = 120
        if tol >= Decimal(limit).scaleb(-scale):
            return limit
        return int(tol.scaleb(scale).to_integral_value(rounding=ROUND_FLOOR))


def tolerance_at_scale(tol: Decimal, scale: int, digits: int = 38) -> Decimal:
    """The tolerance as a decimal of ``digits`` digits at ``scale`` (rounded down, capped at the
    largest such value)."""
    units = tolerance_units(tol, scale, 10**digits - 1)
    with localcontext() as ctx:  # the default 28 digits would round the cap up past the column's
        ctx.prec = 120
        return Decimal(units).scaleb(-scale)
