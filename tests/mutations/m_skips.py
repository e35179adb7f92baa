"""Issue 22, "Skips that hide failures": each flip brings a hidden skip back, and a test catches it."""

from __future__ import annotations

from tests.mutations import Mutation

T = "tests/unit/test_prereqs.py::"
MUTATIONS = [
    Mutation("ci-skips-again", "tests/prereqs.py", "    if in_ci():\n        pytest.fail(",
             "    if False:\n        pytest.fail(", (T + "test_a_missing_prerequisite_fails_under_ci",),
             "a missing prerequisite skips under CI=true"),
    Mutation("old-java-home-hides-java-17", "engine/local/kafka.py",
             "            if major >= MIN_JAVA:\n                return java, major\n            found.append((java, major))",
             "            return java, major", (T + "test_an_old_java_home_does_not_hide_java_17_on_path",),
             "find_java returns JAVA_HOME's Java whatever its version"),
    Mutation("compile-error-swallowed", "engine/connectors/kafka/native.py",
             'raise NativeBuildFailed(f"building the native Kafka scan failed: {msg}")',
             'raise NativeUnavailable(f"building the native Kafka scan failed: {msg}")',
             (T + "test_a_compile_error_in_the_native_scan_fails_its_tests",),
             "a compile error of kafka_scan.c is an 'unavailable' native scan again (a skip)"),
    Mutation("skip-summary-never-fails", "tests/prereqs.py", "    if bad and in_ci():", "    if False:",
             (T + "test_scripts_test_summarises_skips_in_one_line",
              T + "test_scripts_test_prints_the_summary_and_fails_under_ci"),
             "scripts/test passes under CI=true with a skip not on the allow-list"),
    Mutation("tansu-fallback-accepted", "tests/prereqs.py", '        assert backend == "apache", ',
             '        assert backend or "apache", ',
             (T + "test_a_stack_that_fell_back_to_tansu_is_refused_where_java_17_is",),
             "a stack that fell back to Tansu passes where Java 17 is"),
    Mutation("skips-not-recorded", "tests/conftest.py", 'skips.append((rep.nodeid, reason.removeprefix("Skipped: ")))',
             "pass", (T + "test_the_session_writes_its_skips_for_scripts_test",),
             "the session's skips are not written for scripts/test's summary"),
]
