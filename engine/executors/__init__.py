"""Run key-range tasks: ``local`` (in this process, bounded) and ``dask`` (a LocalCluster or a
scheduler's address; the optional extra ``recon[dask]``). See :mod:`engine.executors.base`."""

from __future__ import annotations

from engine.core.errors import UsageError
from engine.executors.base import Executor, unknown_executor

DASK_EXTRA = "pip install 'recon[dask]'"


def _no_dask() -> UsageError:
    return UsageError(f"the dask executor needs the optional extra recon[dask]: {DASK_EXTRA}", field="executor")


def check_executor(spec: str) -> None:
    """A usage error (exit 2) for an executor that cannot be made, found before anything is read:
    a form other than ``local`` | ``dask`` | ``dask://HOST:PORT``, or dask without its extra. Starts
    and joins nothing."""
    import importlib.util

    if spec == "local":
        return
    if spec != "dask" and not spec.startswith("dask://"):
        raise unknown_executor(spec)
    if any(importlib.util.find_spec(m) is None for m in ("dask", "distributed")):
        raise _no_dask()
    if spec != "dask":
        from engine.executors.dask import scheduler_address

        scheduler_address(spec)


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
        raise unknown_executor(spec)
    try:
        from engine.executors.dask import DaskExecutor
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("dask", "distributed"):
            raise
        raise _no_dask() from None
    return DaskExecutor(None if spec == "dask" else spec, workers)
