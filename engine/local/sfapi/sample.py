"""Synthetic Accounts for tests and benchmarks of the local org (the demo scenario has its own generator).

Vectorised with numpy so a million rows take about a second. Deterministic for a given seed. Every
500th name carries a double quote and a comma so CSV quoting is always exercised, and a share of
the optional fields is null so null rendering is too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from engine.core.sfid import make_ids
from engine.local.sfapi.schema import INDUSTRIES, USER_ID

BASE_TIME = np.datetime64("2026-01-01T00:00:00", "ms")


def synthetic_accounts(count: int, *, owner_ids: Sequence[str] = (USER_ID,), seed: int = 7, start: int = 1,
                       pod: str = "5g0000") -> pa.Table:
    """`count` Account rows with ids `make_ids('001', start, count)` and the scenario's custom fields."""
    rng = np.random.default_rng(seed)
    ids = make_ids("001", start, count, pod=pod)
    seq = np.arange(start, start + count)
    names = [f"Account {i:07d}" for i in seq.tolist()]
    for i in range(0, count, 500):
        names[i] = f'Acme "{seq[i]}", Inc.'
    industries = np.array(INDUSTRIES, dtype=object)[rng.integers(0, len(INDUSTRIES), count)]
    industry = pa.array(industries.tolist(), pa.string(), mask=rng.random(count) < 0.1)
    revenue = np.round(rng.lognormal(13, 1.5, count), 2)
    clv = np.round(rng.lognormal(10, 1.2, count), 2)
    rate = np.round(rng.uniform(0.01, 0.15, count), 4)
    owners = np.array(list(owner_ids), dtype=object)[rng.integers(0, len(owner_ids), count)]
    created = BASE_TIME + rng.integers(0, 30 * 86_400_000, count).astype("timedelta64[ms]")
    modified = created + rng.integers(0, 60 * 86_400_000, count).astype("timedelta64[ms]")
    ts = pa.timestamp("ms", tz="UTC")
    return pa.table({
        "Id": pa.array(ids, pa.string()),
        "Name": pa.array(names, pa.string()),
        "Industry": industry,
        "AnnualRevenue": pa.array(revenue, mask=rng.random(count) < 0.05),
        "NumberOfEmployees": pa.array(rng.integers(1, 50_000, count), pa.int64()),
        "OwnerId": pa.array(owners.tolist(), pa.string()),
        "Customer_Lifetime_Value__c": pa.array(clv, mask=rng.random(count) < 0.02),
        "Commission_Rate__c": pa.array(rate),
        "CreatedDate": pa.array(created, ts),
        "LastModifiedDate": pa.array(modified, ts),
        "SystemModstamp": pa.array(modified, ts),
    })
