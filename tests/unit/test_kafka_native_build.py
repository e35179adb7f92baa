"""Building and choosing the native Kafka scan loop: cached builds, a missing or failing compiler
falls back to the Python loop unless the native loop is required."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.connectors.kafka import native as kn
from tests import prereqs

needs_cc = pytest.mark.usefixtures("_compiler_here")


@pytest.fixture
def _compiler_here() -> None:
    prereqs.require_compiler()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private build cache and a module that has not tried to load the library yet."""
    monkeypatch.setenv("RECON_NATIVE_DIR", str(tmp_path / "native"))
    monkeypatch.setattr(kn, "_lib", None)
    monkeypatch.setattr(kn, "_why_not", None)
    return tmp_path / "native"


@needs_cc
def test_build_is_cached_and_rebuilt_only_when_forced(fresh: Path) -> None:
    first = kn.build()
    assert first.parent == fresh and first.exists()
    mtime = first.stat().st_mtime_ns
    assert kn.build() == first and first.stat().st_mtime_ns == mtime  # cached
    assert kn.build(force=True) == first and first.stat().st_mtime_ns != mtime
    assert [p.name for p in fresh.iterdir()] == [first.name]  # no temporary file left behind


@needs_cc
def test_library_exposes_the_scan_functions(fresh: Path) -> None:
    lib = kn.library()
    assert lib is not None and kn.why_not() is None
    ch = kn._Chunk(lib)
    assert ch.count(0) == 0 and ch.raw(4 + kn.VALUE) == b""
    batch, values = kn._to_arrow(ch)
    assert batch.num_rows == 0 and len(values) == 0


def test_failing_compiler_falls_back_unless_required(fresh: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    bad = tmp_path / "cc"
    bad.write_text("#!/bin/sh\necho 'cc: fatal error: out of luck' >&2\nexit 1\n")
    bad.chmod(0o755)
    monkeypatch.setenv("CC", str(bad))
    monkeypatch.delenv(kn.ENV, raising=False)
    assert kn.library() is None
    assert kn.why_not() == "building the native Kafka scan failed: cc: fatal error: out of luck"
    assert not list(fresh.glob("*.so")) and not list(fresh.glob(".build-*"))
    monkeypatch.setattr(kn, "_why_not", None)
    monkeypatch.setenv(kn.ENV, "1")
    with pytest.raises(kn.NativeUnavailable, match="RECON_KAFKA_NATIVE=1 but building the native Kafka scan failed"):
        kn.library()


def test_no_compiler_and_switched_off(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kn.ENV, "0")
    assert kn.library() is None and kn.why_not() is None  # off: not even tried
    monkeypatch.delenv(kn.ENV)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert kn.library() is None
    assert kn.why_not() == "no C compiler (cc, gcc or clang) on PATH"


def test_librdkafka_is_the_one_confluent_kafka_loaded() -> None:
    path = kn.librdkafka_path()
    assert path is not None and "librdkafka" in path.name and path.is_file()
