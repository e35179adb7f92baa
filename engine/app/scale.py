"""How a diff is executed: one pass in memory, or key-range tasks on an executor (``--executor``,
``--workers``, ``--range-rows``, ``--memory-limit``). Light at import (no data libraries), so the
decision is made before :mod:`engine.app.diff` starts any early read."""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine.config import Config
from engine.connectors.refs import parse_reference
from engine.core.errors import UsageError


@dataclass(frozen=True)
class ScaleOptions:
    """How a diff is executed (never what it compares: not part of the request's identity).

    executor: ``local`` | ``dask`` | ``dask://HOST:PORT``; workers: tasks at once (default: the
    cores, or the cluster's workers); range_rows: source rows per task (default from
    memory_limit); memory_limit: bytes the run may use (default: half the machine's memory).
    """

    executor: str = "local"
    workers: int | None = None
    range_rows: int | None = None
    memory_limit: int | None = None
    #: decided once per run by :func:`decide` (None: not yet)
    ranges: bool | None = None

    @property
    def forces_ranges(self) -> bool:
        return self.executor != "local" or self.range_rows is not None

    def resolved_workers(self) -> int:
        import os

        return self.workers or max(1, os.cpu_count() or 1)

    def resolved_memory(self) -> int:
        if self.memory_limit is not None:
            return self.memory_limit
        import psutil

        return int(psutil.virtual_memory().total // 2)


def parse_size(text: str) -> int:
    """``3G``, ``512M``, ``2GiB``, ``1500000000``: bytes (binary units). Refuses anything else."""
    import re

    m = re.fullmatch(r"\s*([0-9]+)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE | re.ASCII)
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"--memory-limit {text!r} is not a size: give bytes or a number with K, M, G or T (e.g. 3G)")
    return int(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())


def refuse_secrets_for_workers(scale: ScaleOptions, source: str, target: str) -> None:
    """A DSN may carry its password when the tasks run in this process, but Dask ships each range
    task's references to its workers (perhaps other machines): a secret there is refused (exit 2)
    before anything connects. The workers read the password from their own environment."""
    from engine.connectors.refs import PostgresRef, secret_keys

    if scale.executor == "local":
        return
    for side, text in (("source", source), ("target", target)):
        ref = parse_reference(text)
        keys = secret_keys(ref.dsn) if isinstance(ref, PostgresRef) else []
        if keys:
            raise UsageError(f"the {side} DSN holds a secret ({', '.join(keys)}), which range tasks would carry "
                             "to the Dask workers: leave it out of the DSN and set PGPASSWORD or PGPASSFILE "
                             "on every worker")

def estimate(ref_text: str, config: Config) -> tuple[int, int] | None:
    """(rows, bytes per row on disk) of a side when its system can say so cheaply, else None."""
    from engine.connectors.registry import source_for

    src = source_for(parse_reference(ref_text), config)
    fn = getattr(src, "estimate", None)
    return fn() if fn is not None else None


def one_pass_fits(source: str, target: str, config: Config, scale: ScaleOptions) -> bool:
    """Whether today's one-pass diff fits in the memory limit (the fastest path when it does): a
    catalog or footer estimate of the larger side, at the bytes per row a one-pass diff uses."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.core.plan import DEFAULT_BYTES_PER_ROW

    def one(ref: str) -> tuple[int, int] | None:
        try:
            return estimate(ref, config)
        except Exception:  # noqa: BLE001 - no estimate: the read reports the real error
            return None

    with ThreadPoolExecutor(2) as pool:  # both sides at once: each is mostly a connection's setup
        ests = list(pool.map(one, (source, target)))
    rows = max((est[0] for est in ests if est is not None), default=0)
    return rows * DEFAULT_BYTES_PER_ROW <= scale.resolved_memory()


def decide(source: str, target: str, config: Config, scale: ScaleOptions) -> ScaleOptions:
    """``scale`` with ``ranges`` set: key ranges when asked for, or when one pass would not fit."""
    if scale.ranges is not None:
        return scale
    return replace(scale, ranges=scale.forces_ranges or not one_pass_fits(source, target, config, scale))
