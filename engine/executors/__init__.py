"""Run key-range tasks: ``local`` (in this process, bounded) and ``dask`` (a LocalCluster or a
scheduler's address; the optional extra ``recon[dask]``). See :mod:`engine.executors.base`."""
