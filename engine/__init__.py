"""recon: reconcile Salesforce with a PostgreSQL warehouse, with Kafka as the third witness."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """``engine.__version__`` on first use: importlib.metadata costs ~50 ms at every start, and
    most commands never print a version."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("recon")
        except PackageNotFoundError:  # running from a source tree without installation
            v = "0.0.0+local"
        globals()["__version__"] = v
        return v
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
