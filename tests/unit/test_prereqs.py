"""Issue 22, "Skips that hide failures": under CI=true a missing prerequisite fails instead of
skipping, a compile error of the native scan fails its tests whenever a compiler exists, an old
JAVA_HOME does not hide a Java 17 on PATH, and scripts/test summarises skips in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.connectors.kafka import native as kn
from engine.local import kafka as lk
from tests import prereqs

ROOT = Path(__file__).resolve().parents[2]


def _pytest(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A small pytest session of its own (a test file in tmp_path), the way scripts/test runs one."""
    test = tmp_path / "test_probe.py"
    test.write_text(body)
    e = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(test),
                           "--rootdir", str(tmp_path)], capture_output=True, text=True, env=e, cwd=tmp_path)


MISSING = "from tests import prereqs\n\ndef test_x():\n    prereqs.missing('no frobnicator here')\n"


def test_a_missing_prerequisite_skips_on_a_developer_machine(tmp_path: Path) -> None:
    run = _pytest(tmp_path, MISSING)
    assert run.returncode == 0, run.stdout
    assert "1 skipped" in run.stdout and "no frobnicator here" in run.stdout


def test_a_missing_prerequisite_fails_under_ci(tmp_path: Path) -> None:
    run = _pytest(tmp_path, MISSING, CI="true")
    assert run.returncode == 1, run.stdout
    assert "1 failed" in run.stdout
    assert "no frobnicator here (CI=true: a missing prerequisite fails the run instead of skipping)" in run.stdout


def test_no_java_fails_the_apache_tests_under_ci(tmp_path: Path) -> None:
    """Java hidden (no JAVA_HOME, a PATH without java): the Apache broker's requirement fails."""
    bare = tmp_path / "bin"
    bare.mkdir()
    body = "from tests import prereqs\n\ndef test_x():\n    prereqs.require_java()\n"
    run = _pytest(tmp_path, body, CI="true", PATH=str(bare), JAVA_HOME="")
    assert run.returncode == 1, run.stdout
    assert "Apache Kafka needs Java 17+ (no Java found)" in run.stdout and "CI=true" in run.stdout


def _fake_java(home: Path, version: str) -> Path:
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2020-01-01' >&2\n")
    java.chmod(0o755)
    return java


def test_an_old_java_home_does_not_hide_java_17_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _fake_java(tmp_path / "jdk8", "1.8.0_392")
    new = _fake_java(tmp_path / "jdk17", "17.0.15")

    def found(java_home: Path, path: Path) -> tuple[str, int] | None:
        lk.find_java.cache_clear()  # cached per process: the environment is fixed in real runs
        monkeypatch.setenv("JAVA_HOME", str(java_home))
        monkeypatch.setenv("PATH", str(path))
        return lk.find_java()

    try:
        assert found(tmp_path / "jdk8", new.parent) == (str(new), 17)
        assert found(tmp_path / "jdk8", tmp_path / "nowhere") == (str(old), 8)  # nothing newer: the old one, to name
        assert found(tmp_path / "jdk17", old.parent) == (str(new), 17)  # JAVA_HOME still wins when new enough
    finally:
        monkeypatch.undo()
        lk.find_java.cache_clear()


def test_a_compile_error_in_the_native_scan_fails_its_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """library() turns a failed build into the Python loop (right for a user); the tests must not
    turn it into a skip whenever a compiler exists."""
    prereqs.require_compiler()
    broken = tmp_path / "kafka_scan.c"
    broken.write_text(kn.SOURCE.read_text() + "\nint this is not C;\n")
    monkeypatch.setattr(kn, "SOURCE", broken)
    monkeypatch.setenv("RECON_NATIVE_DIR", str(tmp_path / "native"))
    monkeypatch.setattr(kn, "_lib", None)
    monkeypatch.setattr(kn, "_why_not", None)
    monkeypatch.delenv(kn.ENV, raising=False)
    try:
        with pytest.raises(pytest.fail.Exception, match="a C compiler is here but the native Kafka scan does not "
                                                       "build: building the native Kafka scan failed"):
            prereqs.require_native_scan()
    except pytest.skip.Exception as exc:  # the defect this test exists for: a skip would pass quietly
        raise AssertionError(f"a compile error became a skip: {exc}") from None


def test_scripts_test_summarises_skips_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = tmp_path / "skips.json"
    monkeypatch.delenv("CI", raising=False)
    assert prereqs.summary(report) == ("skips: none", 0)
    prereqs.record(report, [("t::a", "RECON_KAFKA_NATIVE=0"), ("t::b", "no frobnicator"), ("t::c", "no frobnicator")])
    line, code = prereqs.summary(report)
    assert (line, code) == ("skips: 3 — RECON_KAFKA_NATIVE=0 (×1); no frobnicator (×2)", 0)
    monkeypatch.setenv("CI", "true")
    line, code = prereqs.summary(report)
    assert code == 1 and line.endswith("CI=true: 1 reason(s) not on the allow-list in tests/prereqs.py")
    prereqs.record(report, [("t::a", "RECON_KAFKA_NATIVE=0")])
    assert prereqs.summary(report) == ("skips: 1 — RECON_KAFKA_NATIVE=0 (×1)", 0)  # allowed


def test_the_session_writes_its_skips_for_scripts_test(tmp_path: Path) -> None:
    """The conftest hook records each skip with its reason (and nothing for a pass)."""
    report = tmp_path / "skips.json"
    body = ("import pytest\n\ndef test_a():\n    pytest.skip('RECON_KAFKA_NATIVE=0')\n\n"
            "def test_b():\n    pass\n")
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text().split("pytest_plugins")[0]
                                          + _hook_only())
    run = _pytest(tmp_path, body, RECON_SKIP_REPORT=str(report))
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(report.read_text()) == [{"test": "test_probe.py::test_a", "reason": "RECON_KAFKA_NATIVE=0"}]


def _hook_only() -> str:
    """The suite's skip-recording hook, without the stack plugins (which would start services)."""
    text = (ROOT / "tests" / "conftest.py").read_text()
    return text[text.index("def pytest_sessionfinish"):]


def test_scripts_test_prints_the_summary_and_fails_under_ci(tmp_path: Path) -> None:
    """The tail of scripts/test, on a report with a skip that is not allowed."""
    report = tmp_path / "skips.json"
    prereqs.record(report, [("t::b", "no frobnicator")])
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "tests.prereqs", str(report)], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert (run.returncode, run.stdout) == (0, "skips: 1 — no frobnicator (×1)\n")
    run = subprocess.run([sys.executable, "-m", "tests.prereqs", str(report)], capture_output=True, text=True,
                         env={**env, "CI": "true"}, cwd=ROOT)
    assert run.returncode == 1 and "not on the allow-list" in run.stdout


def test_a_stack_that_fell_back_to_tansu_is_refused_where_java_17_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """services up quietly picks Tansu when the Kafka jars cannot be fetched; the scenario stack
    and the demo test check the broker they got."""
    monkeypatch.setattr(lk, "find_java", lambda: ("/usr/bin/java", 17))
    with pytest.raises(AssertionError, match="the scenario stack ran on the 'tansu' broker although Java 17 is here"):
        prereqs.assert_apache("tansu", "the scenario stack")
    prereqs.assert_apache("apache", "the scenario stack")
    monkeypatch.setattr(lk, "find_java", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    prereqs.assert_apache("tansu", "the scenario stack")  # a machine without Java: Tansu by design
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="ran on 'tansu': Apache Kafka needs Java 17"):
        prereqs.assert_apache("tansu", "the scenario stack")
