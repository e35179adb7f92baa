"""API calls and rows re-read by an incremental poll of a Salesforce side (issue 19), on the local org.

Starts a private stack (embedded PostgreSQL + local Salesforce) in a temporary directory, loads N
synthetic Accounts with COPY, sets the org's clock after their SystemModstamps, then:

1. the first run (``SalesforceSource.changes(req, None)``: the object read whole);
2. the org's clock moves 2 minutes; ``--changed`` (default 0.1%) of the records change through the
   REST API (80% updated, 10% inserted, 10% deleted); the clock moves 1 minute;
3. the incremental poll (``changes(req, watermark)``): API calls (recon's count and the org's, which
   must agree), rows re-read, the window, wall time;
4. the alternatives for the re-read, on the same changes: the Ids getUpdated listed, read back by
   REST ``Id IN (…)`` queries of 500 Ids (recon's ``id_chunk``), and the SystemModstamp re-read
   forced through Bulk API 2.0 (``rest_max_rows = 0``).

Prints one JSON object. Usage: `python bench/bench_sf_changes.py --rows 1000000`.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import load  # noqa: E402
from engine.connectors.base import ReadRequest, SalesforceRef  # noqa: E402
from engine.connectors.salesforce import source  # noqa: E402
from engine.connectors.salesforce.changes import Changes, poll_changes  # noqa: E402
from engine.connectors.salesforce.connector import SalesforceSource  # noqa: E402
from engine.connectors.salesforce.incremental import COVERED  # noqa: E402
from engine.connectors.salesforce.soql import id_list  # noqa: E402
from engine.local.postgres import EmbeddedPostgres  # noqa: E402
from engine.local.salesforce import LocalSalesforce, create_users, load_records, reset_store  # noqa: E402
from engine.local.sfapi.sample import synthetic_accounts  # noqa: E402
from engine.local.state import StackPaths, load_credentials  # noqa: E402

COLUMNS = ["Id", "Name", "Industry", "AnnualRevenue", "NumberOfEmployees", "OwnerId", "Customer_Lifetime_Value__c",
           "Commission_Rate__c", "SystemModstamp"]
CLOCK = datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC)  # after every synthetic SystemModstamp (2026-01-01 + 90 days)


def _config(root: Path, **salesforce: int) -> Any:
    p = root / f"recon-{len(salesforce)}.toml"
    p.write_text("[salesforce]\n" + "".join(f"{k} = {v}\n" for k, v in salesforce.items()))
    return load(p)


def run(rows: int, changed: float, root: Path) -> dict[str, Any]:
    paths = StackPaths.at(root)
    pg_server = EmbeddedPostgres(paths)
    pg = pg_server.start()
    server = LocalSalesforce(paths, pg)
    out: dict[str, Any] = {"rows": rows, "changed_fraction": changed, "cpus": os.cpu_count(),
                           "python": platform.python_version()}

    def used() -> int:
        return int(server.control("GET", "limits")["used"])

    def clock(**body: Any) -> datetime:
        return datetime.fromisoformat(server.control("POST", "clock", body)["now"].replace("+0000", "+00:00"))

    try:
        status = server.start(timeout=60)
        reset_store(pg)
        owners = create_users(pg, 400)
        t = time.perf_counter()
        table = synthetic_accounts(rows, owner_ids=owners)
        load_records(pg, "Account", table, replace=True)
        out["load_s"] = round(time.perf_counter() - t, 1)
        ids = table.column("Id").to_pylist()
        del table
        c = load_credentials(paths)
        os.environ.update(SF_LOGIN_URL=status["login_url"], SF_CA_BUNDLE=status["ca_bundle"],
                          SF_USERNAME=c["salesforce_username"], SF_PASSWORD=c["salesforce_password"],
                          SF_SECURITY_TOKEN=c["salesforce_security_token"])
        for k in ("SF_SESSION_ID", "RECON_SF_CHUNK_ROWS", "RECON_SF_REST_MAX_ROWS", "RECON_SF_ID_CHUNK"):
            os.environ.pop(k, None)
        config = _config(root)
        src = SalesforceSource(SalesforceRef("Account"), config)
        req = ReadRequest(columns=COLUMNS, key_columns=["Id"])
        clock(now=CLOCK.isoformat())

        u0, t = used(), time.perf_counter()
        first = src.changes(req, None)
        out["first_run"] = {"mode": first.mode, "reason": first.reason, "rows": first.frame.height,
                            "api_calls": first.meta["api_calls"], "org_api_calls": used() - u0,
                            "seconds": round(time.perf_counter() - t, 1), "watermark": first.watermark[COVERED]}
        assert first.frame.height == rows
        del first.frame

        clock(advance_seconds=120)
        n = max(1, round(rows * changed))
        n_ins, n_del = n // 10, n // 10
        n_upd = n - n_ins - n_del
        sf = source.connection(config).sf
        step = len(ids) // n
        picked = ids[::step][:n_upd + n_del]
        t = time.perf_counter()
        for i in picked[:n_upd]:
            sf.Account.update(i, {"NumberOfEmployees": 42, "AnnualRevenue": "12345678901234.57"})
        for i in picked[n_upd:]:
            sf.Account.delete(i)
        for k in range(n_ins):
            sf.Account.create({"Name": f"new {k}", "AnnualRevenue": "10.01"})
        out["changes_made"] = {"updated": n_upd, "inserted": n_ins, "deleted": n_del,
                               "seconds": round(time.perf_counter() - t, 1)}
        clock(advance_seconds=60)

        u0, t = used(), time.perf_counter()
        got = src.changes(req, first.watermark)
        wall = time.perf_counter() - t
        assert got.mode == "changes" and got.deleted is not None
        m = got.meta
        out["incremental_poll"] = {
            "api_calls": m["api_calls"], "org_api_calls": used() - u0, "poll_calls": m["poll_calls"],
            "rows_reread": m["rows_reread"], "rows_changed": n_upd + n_ins, "deleted_listed": got.deleted.height,
            "rows_now": got.rows_now, "reread": m["reread"], "window": [m["window_start"], m["window_end"]],
            "seconds": round(wall, 2)}
        assert got.rows_now == rows - n_del + n_ins and got.deleted.height == n_del

        # the alternatives, on the same window
        conn = source.connection(config)
        polled = poll_changes(conn, "Account", datetime.fromisoformat(first.watermark[COVERED]),
                              end=datetime.fromisoformat(got.watermark[COVERED]) + timedelta(seconds=1))
        assert isinstance(polled, Changes)
        per = source.id_chunk(config)
        u0, t = used(), time.perf_counter()
        back = 0
        for k in range(0, len(polled.updated), per):
            soql = f"SELECT {', '.join(COLUMNS)} FROM Account WHERE Id IN ({id_list(polled.updated[k:k + per])})"  # noqa: S608
            back += len(conn.sf.query_all(soql)["records"])
        out["reread_by_id_list_rest"] = {"ids": len(polled.updated), "api_calls": used() - u0, "rows": back,
                                         "ids_per_query": per, "seconds": round(time.perf_counter() - t, 2)}
        bulk = SalesforceSource(SalesforceRef("Account"), _config(root, rest_max_rows=0))
        u0, t = used(), time.perf_counter()
        via_bulk = bulk.changes(req, first.watermark)
        out["incremental_poll_bulk_reread"] = {"api_calls": via_bulk.meta["api_calls"], "org_api_calls": used() - u0,
                                               "rows_reread": via_bulk.meta["rows_reread"],
                                               "seconds": round(time.perf_counter() - t, 2)}
        conn.close()
    finally:
        server.stop()
        pg_server.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="Accounts to load (default 1,000,000)")
    ap.add_argument("--changed", type=float, default=0.001, help="fraction changed between runs (default 0.001)")
    ap.add_argument("--state-dir", type=Path, help="stack directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    root = args.state_dir or Path(tempfile.mkdtemp(prefix="recon-sfchanges-", dir="/tmp"))
    try:
        result = run(args.rows, args.changed, root.resolve())
    finally:
        if args.state_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
