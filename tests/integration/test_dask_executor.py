"""The Dask executor on a real LocalCluster of 2 worker processes (one per module, ~3 s to start):
results in spec order whatever the completion order, retries counted (a raising task and a worker
killed mid-task), the final error raised, and a task graph without the secrets of the environment.

The tests that count retries join the module's scheduler with ``dask://HOST:PORT`` (the other
path of the executor) for stats of their own. Tasks wait for file flags, never for a fixed time.
The task functions are module-level: workers import them by reference, like recon's range task.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import ServiceUnreachable, UsageError
from engine.executors.dask import RETRIES, DaskExecutor

DEADLINE_S = 60.0


def _wait_for(path: Path, what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: {path} did not appear within {DEADLINE_S} s")
        time.sleep(0.02)


def _touch(path: Path, text: str = "") -> None:
    """Written whole, then renamed: a reader never sees half a pid."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)


@dataclass(frozen=True)
class Spec:
    """A task spec as the coordinator's: references and settings, no secret."""

    index: int
    flags: str
    dsn: str = "host=127.0.0.1 port=5432 dbname=warehouse user=recon"


def square_last_first(spec: Spec) -> tuple[int, int]:
    """Task 0 finishes only after the caller was told of every other task (``done-N`` files, written
    by ``on_done``): it completes last. It leaves the worker's thread pool while it waits, so a
    task the scheduler queued behind it on the same worker still runs."""
    flags = Path(spec.flags)
    if spec.index == 0:
        from distributed import secede

        secede()
        for i in range(1, int((flags / "count").read_text())):
            _wait_for(flags / f"done-{i}", "task 0")
    return spec.index, spec.index * spec.index


def always_fails(spec: Spec) -> int:
    if spec.index == 1:
        raise RuntimeError(f"range {spec.index} is broken")
    return spec.index


def fails_once(spec: Spec) -> int:
    """The first attempt of task 1 fails (the flag file is created exclusively: one attempt wins)."""
    if spec.index == 1:
        try:
            (Path(spec.flags) / "failed-once").open("x").close()
        except FileExistsError:
            return 100
        raise ConnectionError("warehouse connection reset")
    return spec.index


def refused(spec: Spec) -> int:
    raise UsageError("column clv does not exist in warehouse.customer_clv")


def unreachable_once(spec: Spec) -> int:
    try:
        (Path(spec.flags) / "unreachable-once").open("x").close()
    except FileExistsError:
        return spec.index
    raise ServiceUnreachable("PostgreSQL 127.0.0.1:5432 unreachable")


def blocks_until_go(spec: Spec) -> tuple[int, int]:
    """Task 0 says which process runs it, then waits for ``go`` (written after that process died)."""
    flags = Path(spec.flags)
    if spec.index == 0:
        _touch(flags / "pid", str(os.getpid()))
        _wait_for(flags / "go", "task 0")
    return spec.index, spec.index + 1


def scheduler_graph(dask_scheduler: Any) -> dict[str, bytes]:
    """On the scheduler: each recon task's run spec as it would travel to a worker (pickled)."""
    from distributed.protocol import pickle

    return {str(k): pickle.dumps(ts.run_spec) for k, ts in dask_scheduler.tasks.items()
            if str(k).startswith("recon-range-")}


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskExecutor]:
    ex = DaskExecutor(None, 2)
    try:
        yield ex
    finally:
        ex.close()


@pytest.fixture
def joined(cluster: DaskExecutor) -> Iterator[DaskExecutor]:
    """A second client of the module's scheduler, joined by address: fresh stats."""
    ex = DaskExecutor("dask://" + cluster.client.scheduler.address.removeprefix("tcp://"), 1)
    assert ex.workers == 2, "a joined scheduler's workers are the ones it has, whatever was asked"
    try:
        yield ex
    finally:
        ex.close()


def _specs(tmp_path: Path, n: int) -> list[Spec]:
    (tmp_path / "count").write_text(str(n))
    return [Spec(i, str(tmp_path)) for i in range(n)]


def test_results_come_in_spec_order_and_on_done_once_per_task(cluster: DaskExecutor, tmp_path: Path) -> None:
    specs = _specs(tmp_path, 5)
    done: list[int] = []

    def on_done(i: int, result: tuple[int, int]) -> None:
        assert result == (i, i * i)
        done.append(i)
        (tmp_path / f"done-{i}").touch()

    results = cluster.run(square_last_first, specs, on_done)
    assert results == [(i, i * i) for i in range(5)]
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert done[-1] == 0, "task 0 waits for the others' on_done: it completes last"
    assert cluster.workers == 2
    assert len(cluster.client.scheduler_info()["workers"]) == 2


def test_a_task_failing_every_attempt_raises_its_error_after_the_retries(joined: DaskExecutor,
                                                                       tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="range 1 is broken"):
        joined.run(always_fails, _specs(tmp_path, 3), lambda i, r: None)
    assert joined.stats.retries == RETRIES == 2
    assert [(r["task"], r["attempt"]) for r in joined.stats.retried] == [(1, 1), (1, 2)]
    assert all(r["error"] == "RuntimeError: range 1 is broken" for r in joined.stats.retried)


def test_a_task_failing_once_is_retried_and_counted(joined: DaskExecutor, tmp_path: Path) -> None:
    assert joined.run(fails_once, _specs(tmp_path, 3), lambda i, r: None) == [0, 100, 2]
    assert joined.stats.retries == 1
    assert joined.stats.retried == [{"task": 1, "attempt": 1, "error": "ConnectionError: warehouse connection reset"}]


def test_a_usage_error_is_not_retried(joined: DaskExecutor, tmp_path: Path) -> None:
    """Retrying cannot create a missing column: the error comes back at once, no retry counted."""
    with pytest.raises(UsageError, match="column clv does not exist"):
        joined.run(refused, _specs(tmp_path, 1), lambda i, r: None)
    assert joined.stats.retries == 0


def test_an_unreachable_service_is_retried(joined: DaskExecutor, tmp_path: Path) -> None:
    assert joined.run(unreachable_once, _specs(tmp_path, 1), lambda i, r: None) == [0]
    assert joined.stats.retries == 1


def test_a_worker_killed_mid_task_is_a_retry_and_the_result_is_the_same(
        cluster: DaskExecutor, joined: DaskExecutor, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    specs = _specs(tmp_path, 4)
    flags = Path(specs[0].flags)
    killed: list[int] = []

    def kill_the_worker_of_task_0() -> None:
        _wait_for(flags / "pid", "killer")
        pid = int((flags / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        _touch(flags / "go")

    killer = threading.Thread(target=kill_the_worker_of_task_0, daemon=True)
    killer.start()
    results = joined.run(blocks_until_go, specs, lambda i, r: None)
    killer.join(DEADLINE_S)
    assert killed, "the worker was not killed: the test proves nothing"
    assert killed[0] != os.getpid()
    assert results == [(i, i + 1) for i in range(4)]
    assert joined.stats.retries >= 1
    assert {r["task"] for r in joined.stats.retried} == {0}
    assert joined.stats.retried[0]["error"].endswith(" lost")
    # the nanny restarts the worker: the module's cluster is whole again for the next test
    cluster.client.wait_for_workers(2, timeout=DEADLINE_S)
    # and the death was reported in the stats only, not as Dask warnings on the user's terminal
    assert capfd.readouterr().err == ""


SECRETS = {"PGPASSWORD": "pg-pw-5c1f9e2a", "SF_PASSWORD": "sf-pw-8d03b7e4", "SF_SECURITY_TOKEN": "sf-tok-71aa4c09"}


def test_the_task_graph_holds_no_secret_of_the_environment(cluster: DaskExecutor, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    graphs: list[dict[str, bytes]] = []

    def inspect(i: int, _: Any) -> None:
        if not graphs:  # while every task of the run is still on the scheduler
            graphs.append(cluster.client.run_on_scheduler(scheduler_graph))
        (tmp_path / f"done-{i}").touch()

    specs = _specs(tmp_path, 3)
    cluster.run(square_last_first, specs, inspect)
    graph = graphs[0]
    ours = sorted(k for k in graph if k.rsplit("-", 1)[0] in {f"recon-range-{i:04d}" for i in range(3)})
    # task 0 is on the scheduler until every other task was reported; a task that finished first
    # may already be released by then (seen once in CI under load: 2 of the 3 keys)
    assert any(k.startswith("recon-range-0000-") for k in ours), graph.keys()
    blob = b"".join(graph[k] for k in ours)
    # the inspection sees the specs' own text: a secret there would be seen too
    assert specs[0].dsn.encode() in blob and b"square_last_first" in blob
    for name, value in SECRETS.items():
        assert value.encode() not in blob, f"{name} is in the task graph"



def allowed_failures(dask_scheduler: Any) -> int:
    return dask_scheduler.allowed_failures


class _DeadFuture:
    def result(self) -> None:
        from distributed import KilledWorker

        raise KilledWorker("recon-range-0007-0a1b2c3d", None, RETRIES)  # type: ignore[arg-type]


def test_a_task_whose_workers_keep_dying_is_exit_5_after_as_many_retries(cluster: DaskExecutor) -> None:
    """The LocalCluster allows RETRIES worker deaths per task, as many as a raising task gets
    retries; then Dask's KilledWorker is a one-line exit 5 naming the range. (Three real deaths
    and restarts would cost this test seconds: the rescheduling itself is the killed-worker test's.)"""
    assert cluster.client.run_on_scheduler(allowed_failures) == RETRIES
    with pytest.raises(ServiceUnreachable) as err:
        cluster._result(_DeadFuture(), 7)
    assert err.value.exit_code == 5
    assert str(err.value) == "range task 7 failed: the Dask workers running it died 3 times (out of memory?)"


def test_a_scheduler_without_workers_is_exit_5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Joined, but nothing would ever run the tasks: one line naming the scheduler and the fix,
    after the (here shortened) deadline, instead of a run waiting forever."""
    from distributed import LocalCluster

    monkeypatch.setattr("engine.executors.dask.CONNECT_TIMEOUT_S", 1)
    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as empty:
        where = empty.scheduler_address.removeprefix("tcp://")
        with pytest.raises(ServiceUnreachable) as err:
            DaskExecutor(f"dask://{where}", 2)
    assert err.value.exit_code == 5
    assert str(err.value) == (f"Dask scheduler {where} has no worker after 1 s: start some with "
                              f"`dask worker tcp://{where}` where recon[dask] is installed")
