"""What the diff asks of an executor: run one picklable function over a list of task specs, at
most ``workers`` at once, tell the caller as each finishes, and say how many attempts were retried.

The function and specs must be importable and picklable by a worker process on another machine:
specs carry references and the run's snapshot token, never a secret (workers read their own
environment and password files).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from engine.core.errors import UsageError

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class RunStats:
    """What the run of the tasks did, for the summary's ``retries`` and the manifest's plan."""

    executor: str
    workers: int
    retries: int = 0
    retried: list[dict[str, Any]] = field(default_factory=list)  # {task, attempt, error} per retried attempt


#: the forms ``--executor`` takes
ACCEPTED = "local, dask or dask://HOST:PORT"


def unknown_executor(spec: str) -> UsageError:
    """The one error for an ``--executor`` value that names no executor."""
    return UsageError(f"--executor {spec!r} is not an executor: use {ACCEPTED}", field="executor")


class Executor(Protocol):
    name: str
    workers: int

    def run(self, fn: Callable[[T], R], specs: Sequence[T], on_done: Callable[[int, R], None]) -> list[R]:
        """``fn(spec)`` for every spec; results in spec order; ``on_done(i, result)`` on the
        calling thread as task ``i`` finishes. A task that still fails after the executor's
        retries raises (the first failure's exception), and no further task starts."""
        ...

    @property
    def stats(self) -> RunStats: ...

    def close(self) -> None: ...
