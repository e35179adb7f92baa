"""The Salesforce size settings as hostile input (the adversarial rows of attacks_settings.py)."""

from __future__ import annotations

from tests.mutations import Mutation

A = "tests/integration/test_adversarial.py::test_attack"
MUTATIONS = [
    Mutation("toml-float-truncated", "engine/connectors/salesforce/source.py",
             "if isinstance(raw, bool) or isinstance(raw, float):", "if isinstance(raw, bool):",
             (A + "[22.1-chunk-rows-a-toml-float]",), "a TOML float size is truncated to an int instead of refused"),
    Mutation("size-out-of-range-accepted", "engine/connectors/salesforce/source.py",
             "    if not lo <= n <= hi:\n        raise UsageError(", "    if False:\n        raise UsageError(",
             (A + "[22.1-chunk-rows-negative-in-the-environment]",), "a size out of range is accepted"),
    Mutation("sizes-checked-only-on-their-path", "engine/connectors/salesforce/source.py",
             "per_job, rest_limit, chunk_size = id_chunk(config), rest_max_rows(config), chunk_rows(config)",
             "per_job, rest_limit, chunk_size = id_chunk(config), rest_max_rows(config), 10**9",
             (A + "[22.1-chunk-rows-negative-in-the-environment]",),
             "chunk_rows is not read on the REST path (a bad value waits for a larger org)"),
]
