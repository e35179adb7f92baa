"""Throughput of the local Salesforce server through the real simple-salesforce client.

Starts a private stack (embedded PostgreSQL + local Salesforce) in a temporary directory, loads N
synthetic Accounts with COPY, then measures, end to end through simple-salesforce over TLS:

* Bulk API 2.0 `sf.bulk2.Account.query(…)` (pages held in memory as CSV text) and `download(…)`
  (pages streamed to files), rows/s and MB/s, plus the server's own job processing time;
* REST `query_all` over `--rest-rows` rows (2,000-row pages through query locators), rows/s.

Prints one JSON object. Usage: `python bench/bench_salesforce.py --rows 1000000`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.connectors.salesforce.client import SalesforceSettings, connect  # noqa: E402
from engine.local.postgres import EmbeddedPostgres  # noqa: E402
from engine.local.salesforce import LocalSalesforce, create_users, load_records, reset_store  # noqa: E402
from engine.local.sfapi.sample import synthetic_accounts  # noqa: E402
from engine.local.state import StackPaths, load_credentials  # noqa: E402

FIELDS = ("Id, Name, Industry, AnnualRevenue, NumberOfEmployees, OwnerId, Customer_Lifetime_Value__c, "
          "Commission_Rate__c, IsDeleted, CreatedDate, LastModifiedDate, SystemModstamp")


def _job_times(conn: Any) -> list[int]:
    jobs = conn.request("GET", "jobs/query").json()["records"]
    return [j["totalProcessingTime"] for j in jobs]


def run(rows: int, rest_rows: int, max_records: int, root: Path) -> dict[str, Any]:
    paths = StackPaths.at(root)
    pg_server = EmbeddedPostgres(paths)
    pg = pg_server.start()
    server = LocalSalesforce(paths, pg)
    out: dict[str, Any] = {"rows": rows, "max_records": max_records, "cpus": os.cpu_count(),
                           "python": platform.python_version()}
    try:
        status = server.start(timeout=60)
        reset_store(pg)
        owners = create_users(pg, 400)
        t = time.perf_counter()
        table = synthetic_accounts(rows, owner_ids=owners)
        out["generate_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        load_records(pg, "Account", table, replace=True)
        out["load_s"] = round(time.perf_counter() - t, 2)
        out["load_rows_per_s"] = round(rows / (time.perf_counter() - t))
        ids = table.column("Id").to_pylist()
        del table
        c = load_credentials(paths)
        conn = connect(SalesforceSettings(
            login_url=status["login_url"], ca_bundle=status["ca_bundle"], username=c["salesforce_username"],
            password=c["salesforce_password"], security_token=c["salesforce_security_token"],
            consumer_key=c["salesforce_consumer_key"], consumer_secret=c["salesforce_consumer_secret"]))
        sf = conn.sf
        soql = f"SELECT {FIELDS} FROM Account"  # noqa: S608 - SOQL for the local org

        t = time.perf_counter()
        n = nbytes = pages = 0
        for page in sf.bulk2.Account.query(soql, max_records=max_records, wait=0):
            pages += 1
            nbytes += len(page)
            n += page.count("\n") - 1
        dt = time.perf_counter() - t
        assert n == rows, (n, rows)
        out["bulk2_query"] = {"seconds": round(dt, 2), "rows_per_s": round(rows / dt), "mb_per_s": round(nbytes / dt / 1e6, 1),
                              "pages": pages, "csv_mb": round(nbytes / 1e6, 1),
                              "server_job_ms": _job_times(conn)[-1]}

        with tempfile.TemporaryDirectory(dir=root) as d:
            t = time.perf_counter()
            results = sf.bulk2.Account.download(soql, d, max_records=max_records, wait=0)
            dt = time.perf_counter() - t
            got = sum(r["number_of_records"] for r in results)
            size = sum(Path(r["file"]).stat().st_size for r in results)
        assert got == rows, (got, rows)
        out["bulk2_download"] = {"seconds": round(dt, 2), "rows_per_s": round(rows / dt),
                                 "mb_per_s": round(size / dt / 1e6, 1), "pages": len(results)}

        rest_rows = min(rest_rows, rows)
        t = time.perf_counter()
        res = sf.query_all(f"SELECT {FIELDS} FROM Account WHERE Id <= '{ids[rest_rows - 1]}'")  # noqa: S608 - SOQL
        dt = time.perf_counter() - t
        assert res["totalSize"] == rest_rows
        out["rest_query_all"] = {"rows": rest_rows, "seconds": round(dt, 2), "rows_per_s": round(rest_rows / dt),
                                 "pages": -(-rest_rows // 2000)}
        out["server_stats"] = server.control("GET", "stats")["requests"]
        conn.close()
    finally:
        server.stop()
        pg_server.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="Accounts to load (default 1,000,000)")
    ap.add_argument("--rest-rows", type=int, default=50_000, help="rows fetched through REST paging")
    ap.add_argument("--max-records", type=int, default=100_000, help="Bulk result page size (maxRecords)")
    ap.add_argument("--state-dir", type=Path, help="stack directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    root = args.state_dir or Path(tempfile.mkdtemp(prefix="recon-sfbench-", dir="/tmp"))
    try:
        result = run(args.rows, args.rest_rows, args.max_records, root.resolve())
    finally:
        if args.state_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
