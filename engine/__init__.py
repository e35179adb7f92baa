"""recon: reconcile Salesforce with a PostgreSQL warehouse, with Kafka as the third witness."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recon")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
