"""``make_executor``: the accepted forms of ``--executor``, and the optional extra ``recon[dask]``
named (exit 2) when it is not installed. No cluster starts here (tests/integration/test_dask_executor.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.errors import Exit, ServiceUnreachable, UsageError
from engine.executors import make_executor
from engine.executors.dask import scheduler_address
from engine.executors.local import LocalExecutor

ROOT = Path(__file__).resolve().parents[2]


def test_local_is_the_in_process_executor() -> None:
    ex = make_executor("local", 3)
    assert isinstance(ex, LocalExecutor) and ex.workers == 3


@pytest.mark.parametrize("spec", ["", "Local", "dask:", "dask:/h:1", "dask+tls://h:8786", "tcp://h:8786",
                                  "dask://", "dask://h:port", "dask://h:99999", "dask://h:8786/x",
                                  "dask://h:8786?x=1", "dask://u:p@h:8786"])
def test_anything_else_is_a_usage_error_naming_the_accepted_forms(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        make_executor(spec, 2)
    assert err.value.exit_code == Exit.USAGE
    assert str(err.value) == f"--executor {spec!r} is not an executor: use local, dask or dask://HOST:PORT"
    assert err.value.field == "executor"


@pytest.mark.parametrize(("spec", "address"), [
    ("dask://10.0.0.5:8786", "tcp://10.0.0.5:8786"),
    ("dask://sched.example.org:9000", "tcp://sched.example.org:9000"),
    ("dask://sched", "tcp://sched:8786"),
    ("dask://[fd00::5]:8786", "tcp://[fd00::5]:8786"),
])
def test_a_scheduler_address_is_joined_over_tcp(spec: str, address: str) -> None:
    assert scheduler_address(spec) == address


def test_no_worker_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="at least one worker"):
        make_executor("local", 0)


def test_an_unreachable_scheduler_is_exit_5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens on port 9 of this machine: refused at once, retried by Dask until its
    timeout (shortened here), then one line naming the scheduler."""
    monkeypatch.setattr("engine.executors.dask.CONNECT_TIMEOUT_S", 1)
    with pytest.raises(ServiceUnreachable) as err:
        make_executor("dask://127.0.0.1:9", 2)
    assert err.value.exit_code == Exit.UNREACHABLE
    assert str(err.value).startswith("Dask scheduler 127.0.0.1:9 unreachable after 1 s")


HIDE_DASK = """
import sys
sys.modules["dask"] = None          # `import dask` fails as if the extra were not installed
sys.modules["distributed"] = None
from engine.core.errors import ReconError
from engine.executors import make_executor
print(type(make_executor("local", 2)).__name__)
for spec in ("dask", "dask://127.0.0.1:8786"):
    try:
        make_executor(spec, 2)
    except ReconError as exc:
        print(int(exc.exit_code), exc)
"""


def test_without_the_extra_dask_is_exit_2_naming_it() -> None:
    run = subprocess.run([sys.executable, "-c", HIDE_DASK], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    need = "2 the dask executor needs the optional extra recon[dask]: pip install 'recon[dask]'"
    assert run.stdout.splitlines() == ["LocalExecutor", need, need]


HIDE_DASK_CLI = """
import sys
sys.modules["dask"] = None
sys.modules["distributed"] = None
sys.argv = ["recon", "diff", "parquet:/nonexistent/a.parquet", "parquet:/nonexistent/b.parquet", "-k", "id",
            "--executor", "dask"]
from engine.cli.main import main
main()
"""


def test_recon_diff_executor_dask_without_the_extra_is_one_line_exit_2_before_reading() -> None:
    """The files do not exist: the executor is checked first (DiffOptions.check), nothing is read."""
    run = subprocess.run([sys.executable, "-c", HIDE_DASK_CLI], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [
        "recon: error: the dask executor needs the optional extra recon[dask]: pip install 'recon[dask]'"]
