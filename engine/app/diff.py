"""`recon diff`: what the command line gave, merged once with the mapping, then run.

This module stays light at import (no data libraries): the PostgreSQL reads of a diff start
before :mod:`engine.app.reconcile` and its Arrow/Polars stack are imported, so the COPYs overlap
those imports (see :mod:`engine.connectors.postgres.early`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.app.evidence import EvidenceOptions
from engine.app.scale import ScaleOptions, decide, refuse_secrets_for_workers
from engine.config import Config
from engine.core.errors import Exit, UsageError

if TYPE_CHECKING:
    from engine.app.reconcile import DiffRun


@dataclass(frozen=True)
class DiffOptions:
    """The options of one `recon diff`, as given: None or empty means "not given" (the mapping's
    value, if any, applies). keys/columns are (source, target) pairs."""

    source: str | None = None
    target: str | None = None
    mapping: str | None = None
    keys: tuple[tuple[str, str], ...] = ()
    columns: tuple[tuple[str, str], ...] = ()
    tolerance: dict[str, Decimal] = field(default_factory=dict)
    source_where: str | None = None
    target_where: str | None = None
    as_of: datetime | None = None
    unique_key: bool = False
    segment_rows: int | None = None
    out_dir: Path | None = None
    evidence: EvidenceOptions = EvidenceOptions()
    scale: ScaleOptions = ScaleOptions()
    #: ``--state DIR`` (incremental runs; the mapping's ``state`` when not given) and its checks
    state: Path | None = None
    full: bool = False
    verify_full: bool = False
    full_every: int | None = None

    def check(self) -> None:
        """Usage errors that need no config (before any extraction)."""
        self.evidence.check()
        if self.full_every is not None and not 1 <= self.full_every <= 1_000_000:
            raise UsageError(f"--full-every must be a whole number of runs from 1 to 1000000 (got {self.full_every})")
        if self.full and self.verify_full:
            raise UsageError("--full and --verify-full exclude each other: --full rebuilds the state, "
                             "--verify-full checks it")
        from engine.executors import check_executor

        check_executor(self.scale.executor)
        if self.scale.executor.startswith("dask://") and self.out_dir is None:
            raise UsageError("--executor dask://… runs tasks on other machines: give --out DIR on storage every "
                             "worker can reach (a shared path), where they write their parts")

    def resolve(self, config: Config) -> dict[str, Any]:
        """The fields of the run's :class:`~engine.app.reconcile.DiffRequest`: each given option over
        the mapping's value. The one place where options and a mapping are merged."""
        m = config.mapping(self.mapping) if self.mapping else None
        if m is None and (not self.source or not self.target):
            raise UsageError("give SOURCE and TARGET, or -C recon.toml --mapping NAME")
        fields: dict[str, Any] = {"keys": ()}
        if m is not None:
            fields.update(source=m.source, target=m.target, keys=m.key, columns=m.columns, tolerance=m.tolerance,
                          source_where=m.source_where, target_where=m.target_where,
                          target_updated_at=m.target_updated_at, types=m.types, mapping=m.name)
        given = dict(source=self.source, target=self.target, keys=self.keys, columns=self.columns,
                     tolerance=self.tolerance, source_where=self.source_where, target_where=self.target_where,
                     as_of=self.as_of, unique_key=self.unique_key or None, segment_rows=self.segment_rows)
        fields.update({k: v for k, v in given.items() if v not in (None, (), {})})
        from engine.connectors.registry import check_condition

        for side in ("source", "target"):
            where = fields.get(f"{side}_where")
            if where is not None:
                origin = f"--{side}-where" if given[f"{side}_where"] is not None else f"[mapping.{m.name}] {side}_where"  # type: ignore[union-attr]
                fields[f"{side}_where"] = check_condition(fields[side], where, origin)
        if m is not None and m.source_updated_at:
            fields["source_updated_at"] = m.source_updated_at
        if self.segment_rows is None and self.state_options(config) is not None:
            from engine.app.incremental import DEFAULT_STATE_SEGMENT_ROWS

            fields["segment_rows"] = DEFAULT_STATE_SEGMENT_ROWS
        return fields

    def state_options(self, config: Config) -> Any:
        """The run's :class:`~engine.app.incremental.StateOptions`, or None (no ``--state`` and no
        mapping ``state``). A relative mapping path is relative to the config file."""
        m = config.mapping(self.mapping) if self.mapping else None
        where = self.state
        if where is None and m is not None and m.state:
            where = Path(m.state)
            if not where.is_absolute() and config.path is not None:
                where = config.path.parent / where
        if where is None:
            if self.full or self.verify_full or self.full_every is not None:
                raise UsageError("--full, --verify-full and --full-every apply to an incremental state: "
                                 "give --state DIR (or state = \"…\" in the mapping)")
            return None
        from engine.app.incremental import DEFAULT_FULL_EVERY, StateOptions

        return StateOptions(Path(where), full=self.full, verify_full=self.verify_full,
                            full_every=self.full_every or DEFAULT_FULL_EVERY)


@dataclass
class DiffOutcome:
    run: DiffRun
    summary: dict[str, Any]

    @property
    def exit_code(self) -> Exit:
        return Exit.FINDINGS if self.run.result.has_differences else Exit.OK


def run(opts: DiffOptions, config: Config, *, progress: Callable[[str], None] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None) -> DiffOutcome:
    """Diff, write ``--out``, record the evidence; the PostgreSQL reads start first (one pass), or
    the key-range plan runs (a diff larger than ``--memory-limit``, or ``--executor``/``--range-rows``).
    ``on_progress`` gets the key-range progress objects (``--progress json``)."""
    import shutil

    from engine.app import evidence
    from engine.connectors.postgres import early

    opts.check()
    ledger_dsn = opts.evidence.ledger_dsn(config)
    fields = opts.resolve(config)
    state = opts.state_options(config)
    refuse_secrets_for_workers(opts.scale, fields["source"], fields["target"])
    scale = decide(fields["source"], fields["target"], config, opts.scale)
    if state is not None and scale.ranges:
        raise UsageError("--state runs in one pass over what changed: drop --executor/--range-rows (or raise "
                         "--memory-limit) for an incremental run")
    if not scale.ranges and state is None:
        early.start_for_diff(fields["source"], fields["target"], keys=fields["keys"],
                             columns=fields.get("columns", ()), source_where=fields.get("source_where"),
                             target_where=fields.get("target_where"), config=config)
    work_dir = opts.out_dir / ".recon-ranges" if (scale.ranges and opts.out_dir) else None
    try:
        from engine.app import reconcile

        d = reconcile.run_diff(reconcile.DiffRequest(**fields), config, progress=progress, scale=scale,
                               on_progress=on_progress, work_dir=work_dir,
                               snapshots=opts.evidence.manifest is not None, state=state)
        outputs = reconcile.write_outputs(d, opts.out_dir) if opts.out_dir else None
        summary = d.summary()
        if ledger_dsn or opts.evidence.manifest:
            summary["evidence"] = evidence.record_diff_evidence(
                d, config=config, outputs=outputs, ledger_dsn=ledger_dsn, manifest_path=opts.evidence.manifest,
                signing_key=opts.evidence.signing_key)
        return DiffOutcome(d, summary)
    finally:
        early.discard()
        if work_dir is not None:  # the tasks' parts: merged into the outputs, or of a failed run
            shutil.rmtree(work_dir, ignore_errors=True)
