"""Issue 19, the lag-aware breaker: each mutation breaks one rule of `recon gate --lag` or of the
breaker's state per reason, and the named tests must fail."""

from __future__ import annotations

from tests.mutations import Mutation

_UNIT = "tests/unit/test_lag.py"
_KAFKA = "tests/integration/test_lag_gate.py::test_lag_opens_with_money_in_flight_and_catching_up_closes_only_lag"
_PG = "tests/integration/test_lag_gate.py::test_lag_from_the_offsets_recon_consume_stores"
_LEGACY = "tests/integration/test_lag_gate.py::test_decisions_from_before_reasons_count_as_variance"

MUTATIONS = [
    Mutation("lag-net-amount", "engine/core/lag.py",
             'total = ok.select(pl.col("amount").cast(AMOUNT_DTYPE).abs().sum())',
             'total = ok.select(pl.col("amount").cast(AMOUNT_DTYPE).sum())',
             (f"{_UNIT}::test_in_flight_sums_amounts_by_size_and_measures_the_oldest_message",),
             "the amount in flight nets refunds against purchases instead of summing sizes"),
    Mutation("lag-at-limit-opens", "engine/core/gate.py",
             "if limits.amount is not None and amount > limits.amount:",
             "if limits.amount is not None and amount >= limits.amount:",
             (f"{_UNIT}::test_strictly_above_and_exact",),
             "an amount equal to lag_amount opens the breaker (not strictly above)"),
    Mutation("lag-amount-float-accepted", "engine/config.py",
             "parsed = Decimal(amount.strip()) if isinstance(amount, str) and amount.strip() else None",
             "parsed = Decimal(str(amount).strip()) if str(amount).strip() else None",
             (f"{_UNIT}::test_a_bad_lag_setting_is_one_line_naming_the_key_and_the_fix",),
             "a TOML float (or integer) lag_amount is accepted: the limit is no longer exact by construction"),
    Mutation("lag-decides-every-reason", "engine/app/lag.py",
             'tripped=tripped, reasons={"lag": state},',
             'tripped=tripped, reasons={"lag": state, "variance": state},',
             (_KAFKA,),
             "catching up also closes an open variance reason"),
    Mutation("exit-code-of-the-decision", "engine/app/gate.py",
             'exit_code = Exit.BREAKER_OPEN if state == "open" else Exit.OK',
             "exit_code = Exit.BREAKER_OPEN if decision.is_open else Exit.OK",
             (_KAFKA,),
             "the gate exits 0 when its own reason closed while another reason is still open"),
    Mutation("latest-decision-of-any-reason", "engine/store/breaker.py",
             """      AND COALESCE(g.body -> 'reasons', '{"variance": null}'::jsonb) ? r.reason\n""",
             "",
             (_LEGACY,),
             "a reason's state is read from the latest decision of any reason (state per reason lost)"),
    Mutation("legacy-decisions-not-variance", "engine/store/breaker.py",
             "jsonb_build_object('variance', g.body -> 'state')",
             "jsonb_build_object('variance', NULL::jsonb)",
             (_LEGACY,),
             "decisions written before reasons existed no longer keep their state (a closed one reads open)"),
    Mutation("postgres-offsets-ignored", "engine/app/lag.py",
             'if limits.offsets == "kafka":',
             "if True:",
             (_PG,),
             'lag_offsets = "postgres" reads the Kafka group\'s commits instead of the offsets recon consume stores'),
]
