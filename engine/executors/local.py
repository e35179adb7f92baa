"""``--executor local``: the tasks run in this process, at most ``workers`` at once (threads: the
work is Arrow, Polars, BLAKE3 and the readers, which release the GIL)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from engine.executors.base import RunStats

T = TypeVar("T")
R = TypeVar("R")


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._stats = RunStats(executor=self.name, workers=self.workers)

    @property
    def stats(self) -> RunStats:
        return self._stats

    def run(self, fn: Callable[[T], R], specs: Sequence[T], on_done: Callable[[int, R], None]) -> list[R]:
        """Tasks are submitted no faster than they finish (at most ``workers`` in flight), so a
        failure stops the run after the tasks already running, and memory holds at most
        ``workers`` ranges."""
        results: dict[int, R] = {}
        todo = list(enumerate(specs))
        running: dict[Future[R], int] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="recon-range") as pool:
            try:
                while todo or running:
                    while todo and len(running) < self.workers:
                        i, spec = todo.pop(0)
                        running[pool.submit(fn, spec)] = i
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        i = running.pop(f)
                        results[i] = f.result()  # raises the task's own error
                        on_done(i, results[i])
            except BaseException:
                todo.clear()
                for f in running:
                    f.cancel()
                raise
        return [results[i] for i in range(len(specs))]

    def close(self) -> None:
        return None
