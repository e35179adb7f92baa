"""Run key-range tasks: ``local`` (in this process, bounded) and ``dask`` (a LocalCluster or a
scheduler's address; the optional extra ``recon[dask]``). See :mod:`engine.executors.base`."""
from __future__ import annotations

from engine.core.errors import UsageError
from engine.executors.base import Executor

EXECUTOR_FORMS = "local, dask (a LocalCluster on this machine) or dask://HOST:PORT (a running scheduler)"


def make_executor(spec: str, workers: int) -> Executor:
    """The executor ``--executor`` names; a usage error (exit 2) for anything else."""
    from engine.executors.local import LocalExecutor

    if spec == "local":
        return LocalExecutor(workers)
    if spec == "dask" or spec.startswith("dask://"):
        try:
            from engine.executors.dask import DaskExecutor
        except ImportError:
            raise UsageError("--executor dask needs the optional extra: pip install 'recon[dask]'") from None
        return DaskExecutor(None if spec == "dask" else spec[len("dask://"):], workers)  # type: ignore[return-value]
    raise UsageError(f"--executor {spec!r} is not an executor: use {EXECUTOR_FORMS}")
