"""Run key-range tasks: ``local`` (in this process, bounded) and ``dask`` (a LocalCluster or a
scheduler's address; the optional extra ``recon[dask]``). See :mod:`engine.executors.base`."""

from __future__ import annotations

from engine.core.errors import UsageError
from engine.executors.base import Executor

ACCEPTED = "local, dask or dask://HOST:PORT"
DASK_EXTRA = "pip install 'recon[dask]'"


def make_executor(spec: str, workers: int) -> Executor:
    """``local`` | ``dask`` (a LocalCluster of ``workers`` processes) | ``dask://HOST:PORT`` (join a
    running scheduler). Dask is imported only here, when asked for: without the extra, the error
    names it instead of an ImportError's traceback."""
    if workers < 1:
        raise UsageError(f"workers = {workers}: at least one worker is needed", field="workers")
    if spec == "local":
        from engine.executors.local import LocalExecutor

        return LocalExecutor(workers)
    if spec != "dask" and not spec.startswith("dask://"):
        raise UsageError(f"unknown executor {spec!r}: use {ACCEPTED}", field="executor")
    try:
        from engine.executors.dask import DaskExecutor
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("dask", "distributed"):
            raise
        raise UsageError(f"the dask executor needs the optional extra recon[dask]: {DASK_EXTRA}",
                         field="executor") from None
    return DaskExecutor(None if spec == "dask" else spec, workers)
