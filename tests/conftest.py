pytest_plugins = ["tests.pg_fixtures", "tests.kafka_fixtures", "tests.salesforce_fixtures", "tests.stack_fixtures"]


def pytest_sessionfinish(session: object) -> None:
    """Write every skip (test id, reason) for scripts/test's one-line summary (tests/prereqs.py)."""
    import os
    from pathlib import Path

    from tests import prereqs

    target = os.environ.get(prereqs.REPORT_ENV)
    if not target or hasattr(session.config, "workerinput"):  # under xdist the controller sees every worker's skips
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")  # type: ignore[attr-defined]
    skips: list[tuple[str, str]] = []
    for rep in (reporter.stats.get("skipped", []) if reporter else []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        skips.append((rep.nodeid, reason.removeprefix("Skipped: ")))
    prereqs.record(Path(target), skips)
