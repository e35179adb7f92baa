"""One test per error class, the way a scheduler meets it: the CLI as a subprocess, in a situation
that raises the error, must exit with the class's code and say ONE line on stderr that names the
data (the table, the host, the file), with no traceback. These need no service: the services' own
refusals (a query PostgreSQL or Salesforce rejects) are in tests/e2e/test_diff_cli.py and
tests/integration/test_salesforce_api.py."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
SF_VARS = ("SF_USERNAME", "SF_PASSWORD", "SF_SECURITY_TOKEN", "SF_CONSUMER_KEY", "SF_CONSUMER_SECRET", "SF_SESSION_ID",
           "SF_INSTANCE_URL", "SF_LOGIN_URL", "SF_JWT_KEY_FILE", "SF_CA_BUNDLE")


def recon(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SF_", "RECON_"))}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout)


def one_line(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    # before an exit 5, one progress line per retry (tests/e2e/test_first_hour.py checks them)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("recon: waiting: ")]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("recon: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


WAIT = re.compile(r"^recon: waiting: (?P<what>.+?) unreachable(?P<doing> [^,]+)?, retrying in (?P<pause>\d+\.\d) s "
                  r"\(attempt (?P<n>\d+), giving up in (?P<left>\d+\.\d) s\): (?P<why>.+)$")


def waits(res: subprocess.CompletedProcess[str], deadline: float) -> list[re.Match[str]]:
    """The progress lines before an exit 5's error line (issue 21: a refused port was silent for
    20 s): one per attempt after the first, numbered from 2, each saying what, why, and how long is
    left (never more than the deadline, less each time)."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("recon: error: "), res.stderr
    found = [WAIT.match(ln) for ln in lines[:-1]]
    assert found and all(found), res.stderr
    assert [int(m["n"]) for m in found] == list(range(2, len(found) + 2)), res.stderr  # type: ignore[index]
    left = [float(m["left"]) for m in found]  # type: ignore[index]
    assert left == sorted(left, reverse=True) and left[0] <= deadline, res.stderr
    return found  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("errors") / "accounts.parquet"
    pl.DataFrame({"Id": ["0015g0000000001AAA"], "clv": ["1.00"]}).write_parquet(p)
    return p


# -- core.errors -----------------------------------------------------------------------------------

def test_usage_error_is_exit_2_naming_the_table_and_the_option() -> None:
    """The consumer (library) words it about the table name; the CLI adds the option that gave it."""
    res = recon("consume", "--bootstrap", "127.0.0.1:9", "--topic", "t", "--group", "g",
                "--dsn", "postgresql://recon@127.0.0.1:9/recon", "--table", "a.b.c")
    one_line(res, 2, "table name 'a.b.c' is not schema.table", "(--table)")


def test_usage_error_from_a_missing_config_file_names_the_file(tmp_path: Path) -> None:
    res = recon("diff", "-C", str(tmp_path / "nope.toml"), "--mapping", "clv")
    one_line(res, 2, str(tmp_path / "nope.toml"))


def test_verification_error_is_exit_4_naming_the_manifest(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert recon("keygen", "--out", str(keys)).returncode == 0
    bad = tmp_path / "diff-manifest.json"
    bad.write_text("this is not a signed envelope")
    res = recon("manifest", "verify", str(bad), "--key", str(keys / "recon.pub"))
    one_line(res, 4, "diff-manifest.json")


def test_service_unreachable_is_exit_5_naming_the_host_at_the_deadline(accounts: Path) -> None:
    port = free_port()
    t = time.monotonic()
    res = recon("diff", f"postgresql://recon:pw-n0t-shown@127.0.0.1:{port}/recon#public.accounts",
                f"parquet:{accounts}", "-k", "id", env={"RECON_CONNECT_DEADLINE": "1"})
    assert time.monotonic() - t < 15
    one_line(res, 5, f"127.0.0.1:{port}/recon unreachable for 1 s (RECON_CONNECT_DEADLINE)")
    found = waits(res, 1.0)  # the server without the DSN's password, refused, how long is left
    assert {m["what"] for m in found} == {f"PostgreSQL at postgresql://recon@127.0.0.1:{port}/recon"}, res.stderr
    assert all("refused" in m["why"] for m in found), res.stderr
    assert "pw-n0t-shown" not in res.stderr + res.stdout


def test_a_bad_deadline_knob_is_exit_2_naming_it(accounts: Path) -> None:
    res = recon("diff", f"postgresql://recon@127.0.0.1:{free_port()}/recon#public.accounts", f"parquet:{accounts}",
                "-k", "id", env={"RECON_CONNECT_DEADLINE": "soon"})
    one_line(res, 2, "RECON_CONNECT_DEADLINE='soon'")


def test_a_consumer_deadline_names_its_option() -> None:
    res = recon("consume", "--bootstrap", "127.0.0.1:9", "--topic", "t", "--group", "g", "--dsn",
                "postgresql://recon@127.0.0.1:9/recon", "--table", "a.b", "--deadline", "0")
    one_line(res, 2, "deadline 0.0 must be a positive number of seconds", "(--deadline)")


# -- Salesforce (engine.connectors.salesforce.client) ----------------------------------------------

def test_salesforce_auth_error_is_exit_2(accounts: Path) -> None:
    res = recon("diff", "salesforce:Account", f"parquet:{accounts}", "-k", "Id", "-c", "clv",
                env={"SF_SESSION_ID": "00Dxx!AQsecret-session"})
    line = one_line(res, 2, "SF_SESSION_ID needs SF_INSTANCE_URL")
    assert "AQsecret-session" not in res.stderr + res.stdout and "secret" not in line


def test_salesforce_config_error_is_exit_2_naming_the_url(accounts: Path) -> None:
    res = recon("diff", "salesforce:Account", f"parquet:{accounts}", "-k", "Id", "-c", "clv",
                env={"SF_LOGIN_URL": "http://login.example.com", "SF_USERNAME": "u@example.com",
                     "SF_PASSWORD": "pw-not-shown"})
    one_line(res, 2, "SF_LOGIN_URL", "http://login.example.com")
    assert "pw-not-shown" not in res.stderr + res.stdout


def test_salesforce_unreachable_is_exit_5_naming_the_host(accounts: Path) -> None:
    port = free_port()
    t = time.monotonic()
    res = recon("diff", "salesforce:Account", f"parquet:{accounts}", "-k", "Id", "-c", "clv",
                env={"SF_LOGIN_URL": f"https://127.0.0.1:{port}", "SF_USERNAME": "u@example.com",
                     "SF_PASSWORD": "pw-not-shown", "RECON_SF_RETRY_DEADLINE": "1"})
    assert time.monotonic() - t < 15  # RECON_SF_RETRY_DEADLINE bounds the login too
    one_line(res, 5, f"Salesforce at https://127.0.0.1:{port} unreachable for 1 s", "connection refused")
    found = waits(res, 1.0)
    assert {m["what"] for m in found} == {f"Salesforce at https://127.0.0.1:{port}"}, res.stderr
    assert all(m["doing"] and "refused" in m["why"] for m in found), res.stderr  # which call, why
    assert "pw-not-shown" not in res.stderr + res.stdout
