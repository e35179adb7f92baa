"""`recon watch`: the incremental diff, explain for new differences and the gate, every period.

Thin: parse, call `engine.app.watch`, print one line per cycle (one JSON object per line with
--json). Exit codes: with --once (or --cycles) the last gate's, 0 closed and 3 open; 0 when stopped
by SIGTERM/SIGINT; 2 for bad input (no ledger, no state, a bad --every), like every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cli.options import ConfigOpt


def register(app: typer.Typer) -> None:
    @app.command("watch")
    def watch_cmd(
        mapping: Annotated[str, typer.Option("--mapping", help="The [mapping.NAME] to watch (it needs state = \"…\", "
                                             "or --state).")],
        every: Annotated[str | None, typer.Option("--every", help="Start a cycle every PERIOD: 30s, 5m, 1h (a cycle "
                                                  "that overruns is followed right after it ends).")] = None,
        once: Annotated[bool, typer.Option("--once", help="Run one cycle and exit with the gate's code (cron, "
                                           "Airflow).")] = False,
        cycles: Annotated[int | None, typer.Option("--cycles", help="Stop after N cycles (exit with the last "
                                                   "gate's code).")] = None,
        out_dir: Annotated[Path | None, typer.Option("--out", help="Where the cycles go (default: watch/MAPPING "
                                                     "next to the config file).")] = None,
        state: Annotated[Path | None, typer.Option("--state", help="The incremental state (default: the "
                                                   "mapping's state).")] = None,
        full_every: Annotated[int | None, typer.Option("--full-every", help="Every N-th diff checks the state with "
                                                       "a full read (default 24).")] = None,
        keep: Annotated[int, typer.Option("--keep", help="Completed cycles kept on disk (older ones are "
                                          "removed; the ledger keeps every cycle).")] = 100,
        config: ConfigOpt = None,
        ledger: Annotated[str | None, typer.Option("--ledger", help="Record every cycle in this recon_audit ledger "
                                                   "(or RECON_LEDGER_DSN, or the ledger dsn in recon.toml); "
                                                   "required.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per cycle, one per "
                                              "line.")] = False,
    ) -> None:
        """Diff incrementally, explain the new differences and gate, every PERIOD or --once.

        Each cycle is recorded in the ledger with OpenLineage events and kept in OUT/cycles/N. SIGTERM
        lets the cycle under way finish and stops (exit 0); after a SIGKILL, the next start redoes the
        unfinished cycle from the consistent state."""
        from engine import config as config_mod
        from engine.app import watch as watch_mod
        from engine.app.evidence import EvidenceOptions

        req = watch_mod.WatchRequest(mapping=mapping, every=every, once=once, cycles=cycles, out_dir=out_dir,
                                     state=state, full_every=full_every, keep=keep,
                                     evidence=EvidenceOptions(ledger))
        req.check()
        res = watch_mod.run(req, config_mod.load(config), emit=_json_line if as_json else _say_cycle)
        raise typer.Exit(int(res.exit_code))


def _json_line(doc: dict[str, Any]) -> None:
    """One cycle, one line: a scheduler or `jq` reads the stream as it comes."""
    import json
    import sys

    sys.stdout.write(json.dumps(doc, sort_keys=True, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _say_cycle(doc: dict[str, Any]) -> None:
    from engine.cli._shared import out

    d = doc["differences"]
    found = (d.get("missing_in_target") or 0) + (d.get("missing_in_source") or 0) + (d.get("mismatched") or 0)
    exp = doc["explain"]
    explained = f"explained {exp.get('records')} record(s)" if exp.get("ran") else f"explain skipped: {exp.get('reason')}"
    reasons = f" ({', '.join(doc['gate']['open_reasons'])})" if doc["gate"]["open_reasons"] else ""
    nxt = f"; next in {doc['next_start_in_s']:.0f}s" if doc.get("next_start_in_s") is not None else ""
    out.print(f"cycle {doc['cycle']} ({doc['incremental'].get('mode')}, {doc['elapsed_s']:.1f}s): {found:,} "
              f"difference(s), {doc['new_differences']:,} new; {explained}; breaker {doc['gate']['state']}{reasons}"
              f"{nxt}", soft_wrap=True, markup=False, highlight=False)
