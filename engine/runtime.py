"""Settings for a recon process (the CLI and its scan workers), made before the data libraries load.

Both come from profiling whole runs (`perf record -a`) on the 2-core benchmark machine; each can be
turned off for diagnosis.
"""

from __future__ import annotations

import os
import sys


def tune_process() -> None:
    """Call first thing in a recon process: before NumPy is imported, and before the big buffers."""
    # NumPy's OpenBLAS starts a thread per core at import that spins waiting for matrix work recon
    # never gives it (perf: ~4% of a diff's CPU); one BLAS thread means no pool at all. Not
    # OMP_NUM_THREADS: pyarrow sizes its own CPU pool from it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    tune_malloc()


def tune_malloc() -> None:
    """Keep glibc's freed memory for reuse instead of handing it back to the kernel at once.

    Why: a recon run allocates and frees hundreds of MB of column buffers (NumPy arrays, segment
    bytes, COPY chunks, Kafka batches); by default glibc maps each large block fresh and unmaps it
    on free, so every reuse page-faults again (≈40k more faults per million diffed rows, ≈0.05 s). A
    32 MiB mmap threshold, a 1 GiB trim threshold and 64 MiB of top padding keep the blocks in the
    heap. Polars and Arrow have their own allocators; this only touches glibc's.
    ``RECON_MALLOC_TUNING=0`` turns it off; other C libraries (no ``mallopt``) are left alone."""
    if os.environ.get("RECON_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 64 << 20)
