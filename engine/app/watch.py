"""`recon watch`: the incremental diff, explain for the new differences and the gate, every period.

Each cycle is the same three use cases a person would run by hand (``recon diff --state``,
``recon explain``, ``recon gate`` and ``recon gate --lag``), each recording its own evidence, and
then one ``watch`` run in the ledger with its OpenLineage events. Proof is non-negotiable: without
a ledger the gate could not verify the diff it decides on, so watch refuses to start (exit 2).

Consistency after a kill rests on two commits that are each atomic: the incremental state's index
(:class:`engine.workspace.StateDirectory`) and the cycle's rename from ``.partial-N`` to ``N``
(:class:`engine.workspace.WatchDirectory`). A cycle killed before its rename is redone under its
number at the next start, from the state as it was left (the state never holds half a run), and
"new differences" are always measured against the last *completed* cycle, so none is skipped.

Scheduling is :func:`engine.core.watch.next_start`: no overlap, no pile-up.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from engine import workspace
from engine.app.evidence import EvidenceOptions
from engine.config import Config
from engine.core import watch as schedule
from engine.core.errors import Exit, UsageError

#: completed cycles kept by default (``--keep``): a day of 15-minute cycles, a few of 5 minutes
DEFAULT_KEEP = 100


@dataclass(frozen=True)
class WatchRequest:
    """`recon watch` as given. ``every``: the period's text (``--every 5m``); ``once``: one cycle
    (cron, Airflow); ``cycles``: stop after this many cycles; ``out_dir``: the cycles (default
    ``watch/MAPPING`` next to the config file)."""

    mapping: str
    every: str | None = None
    once: bool = False
    cycles: int | None = None
    out_dir: Path | None = None
    state: Path | None = None
    full_every: int | None = None
    keep: int = DEFAULT_KEEP
    evidence: EvidenceOptions = EvidenceOptions()

    def check(self) -> None:
        """Usage errors, before the config is read."""
        if self.evidence.manifest is not None or self.evidence.signing_key is not None:
            raise UsageError("recon watch records every cycle in the ledger (--ledger); --manifest and "
                             "--signing-key apply to single runs of diff, explain and gate")
        if self.once == (self.every is not None):
            raise UsageError("give --every PERIOD (e.g. --every 5m) to keep watching, or --once for one cycle "
                             "(cron, systemd timers, Airflow)")
        if self.every is not None:
            schedule.parse_every(self.every)
        if self.cycles is not None and not 1 <= self.cycles <= 1_000_000:
            raise UsageError(f"--cycles must be a whole number from 1 to 1000000 (got {self.cycles})")
        if not 1 <= self.keep <= 1_000_000:
            raise UsageError(f"--keep must be a whole number of cycles from 1 to 1000000 (got {self.keep})")
        if self.full_every is not None and not 1 <= self.full_every <= 1_000_000:
            raise UsageError(f"--full-every must be a whole number of runs from 1 to 1000000 (got {self.full_every})")

    @property
    def period_s(self) -> int | None:
        return schedule.parse_every(self.every) if self.every is not None else None

    def directory(self, config: Config) -> workspace.WatchDirectory:
        if self.out_dir is not None:
            return workspace.WatchDirectory(Path(self.out_dir))
        base = config.path.parent if config.path is not None else Path.cwd()
        return workspace.WatchDirectory(base / "watch" / self.mapping)


@dataclass
class WatchOutcome:
    """What a watcher did: its cycles' documents (``cycle.json``), why it stopped, and its exit code:
    the last gate's (0 closed, 3 open) with ``--once``/``--cycles``, 0 when stopped by a signal."""

    cycles: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = "once"
    exit_code: Exit = Exit.OK


class Abandoned(Exception):
    """A second SIGTERM/SIGINT during a cycle: leave it now (the next start redoes it)."""


class Stopper:
    """SIGTERM and SIGINT as a stop request: the first lets the cycle under way finish and ends the
    watch, a second abandons the cycle (safe: a cycle is committed by one rename). Waiting between
    cycles ends at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals = 0
        self._in_cycle = False

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when a stop was requested."""
        return self.event.wait(max(0.0, seconds))

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        self.event.set()
        if self.signals > 1 and self._in_cycle:
            raise Abandoned(signal.Signals(signum).name)

    @contextmanager
    def installed(self) -> Iterator[Stopper]:
        """The handlers for the watcher's life (main thread only), the previous ones restored after."""
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    @contextmanager
    def cycle(self) -> Iterator[None]:
        self._in_cycle = True
        try:
            yield
        finally:
            self._in_cycle = False


@dataclass(frozen=True)
class _Context:
    req: WatchRequest
    config: Config
    wd: workspace.WatchDirectory
    ledger_dsn: str
    state: Path
    lag: bool
    explain: str | None  # why explain does not run for this mapping, or None when it can


def _context(req: WatchRequest, config: Config) -> _Context:
    from engine.app.diff import DiffOptions

    m = config.mapping(req.mapping)
    ledger_dsn = req.evidence.ledger_dsn(config)
    if not ledger_dsn:
        raise UsageError("recon watch records every cycle and the gate verifies each diff against the ledger: "
                         "pass --ledger DSN, set RECON_LEDGER_DSN or [ledger] dsn in recon.toml")
    opts = DiffOptions(mapping=req.mapping, state=req.state)
    state = opts.state_options(config)
    if state is None:
        raise UsageError(f"recon watch runs incremental diffs: add state = \"…\" to [mapping.{req.mapping}] "
                         "or pass --state DIR")
    lag = config.lag(req.mapping)
    kafka = config.section("kafka")
    why_not = None
    if not m.source.startswith("salesforce:"):
        why_not = "explain needs a Salesforce source"
    elif not kafka.get("bootstrap") or not kafka.get("topic"):
        why_not = "explain needs [kafka] bootstrap and topic"
    return _Context(req, config, req.directory(config), ledger_dsn, Path(state.dir),
                    lag.amount is not None or lag.seconds is not None, why_not)


def run(req: WatchRequest, config: Config, *, emit: Callable[[dict[str, Any]], None],
        stopper: Stopper | None = None, clock: Callable[[], float] = time.monotonic,
        cycle: Callable[[_Context, int], dict[str, Any]] | None = None) -> WatchOutcome:
    """Run cycles until ``--once``/``--cycles`` is done or a signal stops the watch; ``emit`` gets
    each completed cycle's document. ``cycle`` and ``clock`` are replaceable for tests of the loop."""
    req.check()
    ctx = _context(req, config)
    stopper = stopper or Stopper()
    one_cycle = cycle or run_cycle
    out = WatchOutcome()
    with stopper.installed(), _held(ctx.wd):
        ctx.wd.remove_partials()
        n = (ctx.wd.last_completed() or 0) + 1
        period = req.period_s
        while True:
            started = clock()
            try:
                with stopper.cycle():
                    doc = one_cycle(ctx, n)
            except Abandoned:
                out.stopped_by, out.exit_code = "signal", Exit.OK
                return out
            ended = clock()
            out.cycles.append(doc)
            out.exit_code = Exit(doc["exit_code"])
            n += 1
            if stopper.requested:  # a signal during the cycle: it finished, the watch stops cleanly
                out.stopped_by, out.exit_code = "signal", Exit.OK
            elif req.once:
                out.stopped_by = "once"
            elif req.cycles is not None and len(out.cycles) >= req.cycles:
                out.stopped_by = "cycles"
            else:
                out.stopped_by = ""
            assert period is not None or out.stopped_by
            nxt = None if out.stopped_by else schedule.next_start(started, ended, period)  # type: ignore[arg-type]
            doc["next_start_in_s"] = None if nxt is None else round(max(0.0, nxt - clock()), 3)
            emit(doc)
            if nxt is None:
                break
            if stopper.wait(nxt - clock()):
                out.stopped_by, out.exit_code = "signal", Exit.OK
                break
    return out


@contextmanager
def _held(wd: workspace.WatchDirectory) -> Iterator[None]:
    f = wd.lock()
    try:
        yield
    finally:
        f.close()


def _previous_differences(wd: workspace.WatchDirectory, n: int) -> Any:
    """The differences of the last completed cycle before ``n`` (None: there is none)."""
    import polars as pl

    done = [c for c in wd.completed() if c < n]
    if not done:
        return None
    path = wd.diff(wd.cycle_dir(done[-1])).differences_path
    return pl.read_parquet(path) if path.is_file() else None


def run_cycle(ctx: _Context, n: int) -> dict[str, Any]:
    """One cycle, written under ``.partial-N`` and committed by its rename: diff (incremental, with
    the mapping's state), explain (the new differences only), gate (and gate --lag), evidence."""
    import polars as pl

    from engine.app import diff as diff_mod
    from engine.app import evidence as ev
    from engine.app import gate as gate_mod
    from engine.evidence import lineage as ol
    from engine.evidence.manifest import describe_input

    req, config, wd = ctx.req, ctx.config, ctx.wd
    run_id = ol.new_run_id()
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    cycle_dir = wd.begin(n)
    evidence = EvidenceOptions(ctx.ledger_dsn)
    diff_out = wd.diff(cycle_dir)
    d = diff_mod.run(diff_mod.DiffOptions(mapping=req.mapping, out_dir=diff_out.dir, evidence=evidence,
                                          state=ctx.state, full_every=req.full_every), config)
    summary = d.summary
    current = pl.read_parquet(diff_out.differences_path)
    keys = schedule.new_keys(_previous_differences(wd, n), current)
    explain: dict[str, Any] = {"ran": False, "new_keys": len(keys)}
    if ctx.explain is not None:
        explain["reason"] = ctx.explain
    elif not keys:
        explain["reason"] = "no new differences"
    else:
        from engine.app import explain as explain_mod

        exp_dir = wd.explain(cycle_dir).dir
        res = explain_mod.run(explain_mod.ExplainRequest(diff_dir=diff_out.dir, out_dir=exp_dir, evidence=evidence,
                                                         only_keys=tuple(keys)), config)
        explain.update(ran=True, records=res.explanation.summary.get("records"),
                       run_id=(res.document.get("evidence") or {}).get("run_id"))
    gate = gate_mod.run_gate(gate_mod.GateRequest(diff=diff_out.dir, mapping=req.mapping, evidence=evidence,
                                                  out_dir=wd.gate_dir(cycle_dir)), config)
    gates = [gate]
    if ctx.lag:
        gates.append(gate_mod.run_gate(gate_mod.GateRequest(lag=True, mapping=req.mapping, evidence=evidence,
                                                            out_dir=wd.gate_dir(cycle_dir, lag=True)), config))
    final = gates[-1]  # with the ledger, each document is the whole breaker after its decision
    inc = summary.get("incremental") or {}
    doc: dict[str, Any] = {
        "cycle": n,
        "mapping": req.mapping,
        "run_id": run_id,
        "started_at": started_at.isoformat(),
        "status": summary.get("status", "ok"),
        "incremental": {k: inc.get(k) for k in ("mode", "reason", "touched_segments", "segments")},
        "differences": {k: summary.get(k) for k in ("missing_in_target", "missing_in_source", "mismatched",
                                                    "unchanged", "distinct_keys")},
        "merkle": summary.get("merkle"),
        "new_differences": len(keys),
        "explain": explain,
        "gate": {"state": final.document["state"], "open_reasons": final.document["open_reasons"],
                 "lag": ctx.lag, "decisions": [dict(g.decision.reasons) if g.decision else {} for g in gates]},
        "exit_code": int(final.exit_code),
        "runs": {"diff": (summary.get("evidence") or {}).get("run_id"),
                 "gate": [(g.document.get("evidence") or {}).get("run_id") for g in gates]},
    }
    doc["elapsed_s"] = round(time.perf_counter() - t0, 3)
    finished_at = datetime.now(UTC)
    doc["finished_at"] = finished_at.isoformat()
    outputs = [f for f in (*diff_out.files(), workspace.gate_decision_path(wd.gate_dir(cycle_dir))) if f.is_file()]
    ol_sect = config.section("openlineage")
    recorded = ev.record_evidence(
        "watch", doc, [describe_input("diff", {"system": "parquet", "path": str(diff_out.differences_path)})],
        outputs, ledger_dsn=ctx.ledger_dsn, manifest_path=None, signing_key=None, config_digest=config.digest,
        lineage_dir=wd.lineage_dir(cycle_dir), lineage_http=ol.http_settings(ol_sect),
        lineage_namespace=str(ol_sect.get("namespace") or ol.DEFAULT_NAMESPACE), run_id=run_id,
        started_at=started_at, finished_at=finished_at, passfile=config.pg_passfile())
    doc["ledger_seq"] = (recorded.get("ledger") or {}).get("run_seq")
    doc["openlineage"] = [e["eventType"] for e in recorded.get("openlineage", [])]
    final_dir = wd.complete(cycle_dir, n, doc)
    wd.prune(req.keep)
    doc["dir"] = str(final_dir)
    return doc
