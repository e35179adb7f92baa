"""`recon cost` (the data-debt model) and `recon report` (the self-contained HTML report).

Thin shells: the measurement is `engine.app.cost`, the model `engine.core.cost`, the page `engine.report.html`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cli.options import ConfigOpt as Cfg
from engine.cli.options import LedgerVerifyOpt, PubKeyOpt


def _trust(ledger: str | None, pubkey: Path | None, cfg: Any) -> Any:
    """What the input directories are verified against: --key, else the ledger (option, environment
    or config)."""
    from engine.app.evidence import resolve_ledger_dsn
    from engine.app.trust import TrustOptions

    return TrustOptions(resolve_ledger_dsn(ledger, cfg), pubkey, cfg.pg_passfile() if cfg is not None else None)


def _warn_unverified(verification: dict[str, Any]) -> None:
    if verification.get("status") == "unverified":
        from engine.cli._shared import err

        err.print("recon: warning: unverified: the input directories were not checked against a ledger or a signed "
                  "manifest (give --ledger DSN or --key PUB)", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("cost")
    def cost_cmd(
        explain_dir: Annotated[Path | None, typer.Option("--explain", help="Output dir of `recon explain` (measured commission overpayment).")] = None,
        diff_dir: Annotated[Path | None, typer.Option("--diff", help="Output dir of `recon diff` (measured abs CLV variance; default: the diff the explain read).")] = None,
        config: Cfg = None,
        sets: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE overriding the config's cost table (repeatable), e.g. --set mttd_days=7.")] = None,
        ledger: LedgerVerifyOpt = None,
        pubkey: PubKeyOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the demo's cost.json).")] = False,
    ) -> None:
        """Price the incident and its prevention: exposure, expected loss, break-even and 12-month risk-adjusted ROI.

        Every input is printed next to the result; the defaults are examples: set yours in recon.toml or with --set.
        """
        from engine import config as config_mod
        from engine.app import cost
        from engine.core import cost as cost_model

        cfg = config_mod.load(config)
        doc, (inputs, result, sources, measured) = cost.document(
            explain_dir, diff_dir, cfg.section("cost"), cost_model.parse_sets(sets), cfg.where,
            trust=_trust(ledger, pubkey, cfg))
        _warn_unverified(doc["verification"])
        if as_json:
            from engine.cli._shared import emit_json

            emit_json(doc)
            return
        from engine.cli._shared import out

        render_cost(out, inputs, result, sources, measured)

    @app.command("report")
    def report_cmd(
        from_dir: Annotated[Path, typer.Option("--from", help="A recon output directory (e.g. recon-out from `recon demo`).")],
        out_file: Annotated[Path | None, typer.Option("--out", help="HTML file to write (default DIR/report.html).")] = None,
        config: Cfg = None,
        top: Annotated[int, typer.Option("--top", min=1, max=200, help="Account owners shown in the exposure chart.")] = 15,
        ledger: LedgerVerifyOpt = None,
        pubkey: PubKeyOpt = None,
        checkpoint: Annotated[Path | None, typer.Option(
            "--checkpoint", help="An exported ledger checkpoint (or a signed manifest): the Proof section checks "
            "the ledger chain up to it (needs the ledger).")] = None,
    ) -> None:
        """Write one self-contained HTML report (inline SVG charts, no script, no network) from a recon output dir.

        Each artefact is verified first (--ledger or --key PUB; exit 4 when one does not match); without
        either the report shows "unverified" in red. Its Proof section lists every check: signatures
        (key fingerprint), subject digests, Merkle roots from the snapshots, the ledger chain up to
        --checkpoint; a failed one is red and exits 4 (the page is still written, without unverified figures)."""
        from engine import config as config_mod
        from engine.app.report import write_report
        from engine.cli._shared import out

        cfg = config_mod.load(config) if config else None
        trust = _trust(ledger, pubkey, cfg)
        path = write_report(from_dir, out_file, cfg, top, trust=trust, checkpoint=checkpoint)
        if not trust.available:
            _warn_unverified({"status": "unverified"})
        out.print(f"report written to {path}")


def _num(d: Any, places: str = "0.01") -> str:
    from decimal import ROUND_HALF_UP, Decimal

    q = Decimal(places)
    v = d.quantize(q, rounding=ROUND_HALF_UP)
    return f"{v:,}"


def _plain(d: Any) -> str:
    """An input as the user wrote it, with thousands separators for big numbers."""
    from decimal import Decimal

    if abs(d) >= 1000 and d == d.to_integral_value():
        return f"{int(d):,}"
    if abs(d) >= 1000:
        return f"{d:,}"
    return str(d if d != d.to_integral_value() else d.quantize(Decimal(1)))


def render_cost(console: Any, i: Any, r: Any, sources: dict[str, str], measured: Any) -> None:
    """Two tables: the inputs with their source, then each result with its formula filled in."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from engine.core import cost as cost_model

    t = Table(title="recon cost: inputs", caption=escape("defaults are examples: set yours in [cost] of recon.toml "
                                                       "or with --set KEY=VALUE"),
              header_style="bold", box=box.SIMPLE)
    t.add_column("input", no_wrap=True)
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("unit", no_wrap=True)
    t.add_column("source")
    for k, v in i.as_dict().items():
        t.add_row(k, _plain(v), cost_model.KEYS[k][0], escape(sources.get(k, "")))
    console.print(t)
    p = Table(title="recon cost: results", header_style="bold", box=box.SIMPLE)
    p.add_column("result", no_wrap=True)
    p.add_column("value", justify="right")
    p.add_column("computed as")
    p.add_row("exposure", _num(r.exposure),
              f"{_num(i.commission_overpayment)} overpayment + {_num(i.clv_abs_variance)} abs CLV variance "
              f"× {_plain(i.restatement_cost_rate)} restatement rate")
    p.add_row("cost per incident", _num(r.cost_per_incident),
              f"{_num(r.exposure)} exposure + {_plain(i.mttd_days)} days MTTD × {_plain(i.ops_cost_per_day)}/day")
    p.add_row("expected monthly loss", _num(r.expected_monthly_loss),
              f"{_plain(i.failure_probability_per_month)} failure probability × ({_num(r.cost_per_incident)} + "
              f"{_plain(i.penalty_probability_given_failure)} × {_plain(i.penalty)} penalty)")
    p.add_row("one-time prevention", _num(r.one_time_prevention),
              f"{_plain(i.engineering_hours)} hours × {_plain(i.hourly_rate)}/hour")
    be = cost_model.days_text(r.break_even_days)
    p.add_row("break-even", "never" if be == "never" else f"{be} days",
              f"{_num(r.one_time_prevention)} ÷ (({_num(r.expected_monthly_loss)} − {_plain(i.infra_cost_per_month)} "
              "infra/month) ÷ 30)" + (": the running cost is at least the loss it removes" if be == "never" else ""))
    roi = r.roi_12_months
    p.add_row("12-month risk-adjusted ROI", "undefined" if roi is None else f"{_num(roi * 100, '0.1')}%",
              f"(12 × {_num(r.expected_monthly_loss)} − {_num(r.one_time_prevention)} − 12 × "
              f"{_plain(i.infra_cost_per_month)}) ÷ ({_num(r.one_time_prevention)} + 12 × {_plain(i.infra_cost_per_month)})")
    console.print(p)
    for label, src in (("overpayment", measured.overpayment_from), ("abs CLV variance", measured.variance_from)):
        if src:
            console.print(f"[dim]{label} measured from {escape(src)}[/dim]")
