"""One rule for a test whose prerequisite is missing: a visible skip on a developer's machine, a
failure under ``CI=true``.

A skip in CI hides exactly what CI exists to catch (a runner image without Java 17, a compiler, or
Chromium would otherwise turn the Apache broker, native scan or report tests into a green run).
``scripts/test`` also summarises every skip after pytest's line and fails under ``CI=true`` on any
skip whose reason is not on :data:`ALLOWED` (see README, "Tests").
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NoReturn

import pytest

#: skips that may happen under CI=true: (reason pattern, why it is allowed). Keep it short.
ALLOWED: tuple[tuple[str, str], ...] = (
    (r"^RECON_KAFKA_NATIVE=0$", "the native Kafka loop switched off on purpose by the person running the tests"),
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail with it when ``CI=true``."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails the run instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_native_scan() -> None:
    """The native Kafka loop must be there: skip only when switched off on purpose; fail when a
    compiler exists and the build fails (a compile error of kafka_scan.c is recon's defect, which
    ``library()`` would turn into a quiet fallback); otherwise :func:`missing`."""
    from engine.connectors.kafka import native as kn

    if kn.wanted() is False:
        pytest.skip(f"{kn.ENV}=0")
    if kn.library() is not None:
        return
    if kn._compiler() is not None:
        try:
            kn.build()
        except kn.NativeBuildFailed as exc:
            pytest.fail(f"a C compiler is here but the native Kafka scan does not build: {exc}", pytrace=False)
        except kn.NativeUnavailable as exc:
            missing(f"native Kafka scan unavailable here: {exc}")
    missing(f"native Kafka scan unavailable here: {kn.why_not()}")


def require_compiler() -> None:
    from engine.connectors.kafka import native as kn

    if kn._compiler() is None:
        missing("no C compiler (cc, gcc or clang) on PATH: the native Kafka scan cannot be built")


def require_java() -> None:
    """Apache Kafka needs Java 17+; Tansu tests still run without it."""
    from engine.local.kafka import MIN_JAVA, find_java

    found = find_java()
    if found is None or found[1] < MIN_JAVA:
        have = f"Java {found[1]}" if found else "no Java"
        missing(f"Apache Kafka needs Java {MIN_JAVA}+ ({have} found): Apache Kafka tests skipped")


def assert_apache(backend: str, what: str) -> None:
    """``services up`` falls back to Tansu quietly when the Kafka jars cannot be fetched: a test
    that means the Apache broker checks it got it. Without Java 17 the stack runs on Tansu by
    design (a developer's machine), which CI=true does not accept."""
    from engine.local.kafka import MIN_JAVA, find_java

    found = find_java()
    if found is not None and found[1] >= MIN_JAVA:
        assert backend == "apache", f"{what} ran on the {backend!r} broker although Java {found[1]} is here: " \
                                    "the Apache Kafka jars could not be fetched or started (see its log)"
    elif in_ci():
        pytest.fail(f"{what} ran on {backend!r}: Apache Kafka needs Java {MIN_JAVA}+ (CI=true)", pytrace=False)


def allowed(reason: str) -> bool:
    return any(re.search(pattern, reason) for pattern, _ in ALLOWED)


# ---------------------------------------------------------------------------------------------
# the skip report scripts/test prints (RECON_SKIP_REPORT names the file the session writes)

REPORT_ENV = "RECON_SKIP_REPORT"


def record(path: Path, skips: list[tuple[str, str]]) -> None:
    path.write_text(json.dumps([{"test": t, "reason": r} for t, r in skips]))


def summary(path: Path) -> tuple[str, int]:
    """The one line scripts/test prints, and its exit code (1 under CI=true with a skip not allowed)."""
    skips = json.loads(path.read_text()) if path.exists() and path.stat().st_size else []
    if not skips:
        return "skips: none", 0
    reasons: dict[str, int] = {}
    for s in skips:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    line = f"skips: {len(skips)} — " + "; ".join(f"{r} (×{n})" for r, n in sorted(reasons.items()))
    bad = sorted({s["reason"] for s in skips if not allowed(s["reason"])})
    if bad and in_ci():
        return line + f" — CI=true: {len(bad)} reason(s) not on the allow-list in tests/prereqs.py", 1
    return line, 0


def main(argv: list[str]) -> int:
    line, code = summary(Path(argv[0]))
    print(line.replace("\n", " "))
    return code


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
