"""``--executor dask`` and ``--executor dask://HOST:PORT``: the range tasks run on Dask workers.

The only module that imports ``dask``/``distributed`` (an import-linter rule): the extra
``recon[dask]`` is optional, and :func:`engine.executors.make_executor` turns its absence into a
usage error naming it.

What goes into the task graph: the task function (by reference: every worker must have recon
installed), its spec, the index of the task and the name of an event topic. Never the environment:
a worker reads its secrets from its own environment or password files.

Retries. Dask retries a task in two ways, and both count as retried attempts in :class:`RunStats`:

- the task raised: Dask runs it again, ``retries=`` times (:data:`RETRIES`);
- the worker running it died (killed, out of memory, machine lost): the scheduler reschedules it,
  until ``allowed-failures`` workers died with it, then fails it with ``KilledWorker``. A
  LocalCluster started here allows :data:`RETRIES` such deaths, so a range that kills its worker
  fails as soon as one that raises; a scheduler you run keeps its own setting (Dask's default: 3).

Neither kind of retry is visible from the client, so the wrapper around the task logs an event at
the start of every attempt (a round trip to the scheduler, done before the task's work begins) and
its error, if it raises, on a topic of the run, which the client subscribes to: events are pushed
as they happen, so none is lost to the scheduler's bounded event log on a long run. A retried
attempt is any attempt but a task's last.

A task that raises a recon error other than :class:`ServiceUnreachable` (a usage error such as a
missing column or privilege, a failed verification) is not retried: the same data and settings
would fail the same way. Its error reaches the caller unchanged, as every task's final error does;
a task that lost too many workers becomes a :class:`ServiceUnreachable` (exit 5) naming the range.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from distributed import (
    CancelledError,
    Client,
    KilledWorker,
    LocalCluster,
    as_completed,
    get_client,
    get_worker,
)

from engine.core.errors import ReconError, ServiceUnreachable
from engine.executors.base import RunStats, unknown_executor

T = TypeVar("T")
R = TypeVar("R")

#: Attempts after the first, for a task that raises and (LocalCluster) for one whose worker dies.
RETRIES = 2
#: How long to wait for a scheduler to answer, and for it to have a worker, before exit 5.
CONNECT_TIMEOUT_S = 30
DEFAULT_PORT = 8786


def scheduler_address(spec: str) -> str:
    """``dask://HOST[:PORT]`` → ``tcp://HOST:PORT`` (Dask's default port 8786 when none is given).

    >>> scheduler_address("dask://10.0.0.5:8786"), scheduler_address("dask://[::1]")
    ('tcp://10.0.0.5:8786', 'tcp://[::1]:8786')
    """
    bad = unknown_executor(spec)
    try:
        u = urlsplit(spec)
        port = u.port or DEFAULT_PORT
    except ValueError:
        raise bad from None
    if u.scheme != "dask" or not u.hostname or u.path not in ("", "/") or u.query or u.fragment or u.username:
        raise bad
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"tcp://{host}:{port}"


@dataclass(frozen=True)
class _Refused:
    """A recon error that retrying cannot fix, returned (not raised) so Dask does not retry it."""

    error: BaseException


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def _attempt(fn: Callable[[Any], Any], spec: Any, topic: str, index: int) -> Any:
    """One attempt of task ``index``, on a worker: say that it started (and how it failed)."""
    worker = get_worker()
    # the worker's client (one per worker process) makes this a round trip, not Worker.log_event's
    # batched send: the start must be on the scheduler before the task can kill its worker (a send
    # still in the batch dies with the process, and the retry it announced would go uncounted)
    get_client().log_event(topic, {"task": index, "event": "start", "worker": worker.address})
    try:
        return fn(spec)
    except ReconError as exc:
        worker.log_event(topic, {"task": index, "event": "error", "error": _describe(exc)})
        if isinstance(exc, ServiceUnreachable):
            raise
        return _Refused(exc)
    except BaseException as exc:
        worker.log_event(topic, {"task": index, "event": "error", "error": _describe(exc)})
        raise


class DaskExecutor:
    """``address`` None: a LocalCluster of ``workers`` processes (one thread each: a task is a
    process's worth of Arrow and readers); otherwise ``dask://HOST:PORT`` of a running scheduler,
    whose workers are what it has (``workers`` is then the count found on joining)."""

    name = "dask"

    def __init__(self, address: str | None, workers: int) -> None:
        self.address = address
        self._cluster: LocalCluster | None = None
        if address is None:
            self.workers = max(1, workers)
            # no dashboard (a web server nobody asked for), and the scheduler's remaining HTTP
            # endpoints on a free port of localhost, not Dask's default 8787 (taken by any other
            # cluster on the machine: a warning on stderr); the scheduler and workers log only what
            # is fatal: a worker killed and restarted is a retry, reported in the stats, not a page
            # of warnings on the user's terminal
            self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, silence_logs=logging.CRITICAL,
                                         scheduler_kwargs={"allowed_failures": RETRIES,
                                                           "dashboard_address": "127.0.0.1:0"})
            self.client = Client(self._cluster, set_as_default=False)
        else:
            tcp = scheduler_address(address)
            where = tcp.removeprefix("tcp://")
            try:
                self.client = Client(tcp, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ServiceUnreachable(f"Dask scheduler {where} unreachable after {CONNECT_TIMEOUT_S} s "
                                         f"({type(exc).__name__})") from None
            try:
                self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                self.client.close()
                raise ServiceUnreachable(f"Dask scheduler {where} has no worker after {CONNECT_TIMEOUT_S} s: "
                                         f"start some with `dask worker {tcp}` where recon[dask] is installed") from None
            self.workers = len(self.client.scheduler_info(n_workers=-1)["workers"])
        self._stats = RunStats(executor=self.name, workers=self.workers)

    @property
    def stats(self) -> RunStats:
        return self._stats

    def run(self, fn: Callable[[T], R], specs: Sequence[T], on_done: Callable[[int, R], None]) -> list[R]:
        """All tasks are submitted at once (the scheduler queues them: a worker holds one running
        task and the next); each result is fetched as it completes and released on the workers.
        The keys carry the run's token: two runs on one scheduler never share a result."""
        token = uuid.uuid4().hex[:8]
        topic = f"recon-attempts-{token}"
        events: list[dict[str, Any]] = []
        lock = threading.Lock()

        def collect(event: tuple[float, dict[str, Any]]) -> None:
            with lock:
                events.append(event[1])

        self.client.subscribe_topic(topic, collect)
        pending: dict[Any, int] = {}
        results: dict[int, R] = {}
        try:
            for i, spec in enumerate(specs):
                f = self.client.submit(_attempt, fn, spec, topic, i, key=f"recon-range-{i:04d}-{token}",
                                       pure=False, retries=RETRIES)
                pending[f] = i
            for f in as_completed(list(pending), loop=self.client.loop):
                i = pending.pop(f)
                results[i] = self._result(f, i)
                on_done(i, results[i])
                f.release()
        except BaseException:
            if pending:  # no further task starts; a lost scheduler must not hide the run's own error
                with contextlib.suppress(Exception):
                    self.client.cancel(list(pending), force=True)
            raise
        finally:
            pending.clear()
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(topic)
            with lock:
                self._count_retries(events)
        return [results[i] for i in range(len(specs))]

    def _result(self, f: Any, i: int) -> Any:
        try:
            value = f.result()
        except KilledWorker as exc:
            raise ServiceUnreachable(f"range task {i} failed: the Dask workers running it died "
                                     f"{exc.allowed_failures + 1} times (out of memory?)") from None
        except CancelledError:
            raise ServiceUnreachable(f"range task {i} was cancelled: the Dask scheduler was lost") from None
        if isinstance(value, _Refused):
            raise value.error
        return value

    def _count_retries(self, events: list[dict[str, Any]]) -> None:
        attempts: dict[int, list[dict[str, Any]]] = {}
        for e in events:
            tries = attempts.setdefault(int(e["task"]), [])
            if e["event"] == "start":
                tries.append({"worker": e.get("worker"), "error": None})
            elif tries:
                tries[-1]["error"] = e.get("error")
        for task in sorted(attempts):
            for n, a in enumerate(attempts[task][:-1], start=1):
                error = a["error"] or f"worker {a['worker']} lost"
                self._stats.retried.append({"task": task, "attempt": n, "error": error})
                self._stats.retries += 1

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
