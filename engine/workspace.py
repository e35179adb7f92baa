"""Artefact directories: the one place that knows their file names and layouts.

Every command that writes a directory (``diff --out``, ``explain --out``, ``repair``, ``gate --out``)
and every command that reads one (explain, gate, repair, cost, report) goes through the classes
here, so a layout changes in one file and a reader can never look for a name the writer no longer
uses. Writes are atomic per file (a temporary name, then ``os.replace``), so a reader never sees half
a JSON document.

Layouts:

* a diff directory: ``summary.json``, ``differences.parquet``;
* an explain directory: ``explain.json``, ``findings.parquet``;
* a repair directory: ``plan.json``, ``action_list.json``, ``action_list.csv``, ``repair.json``
  (after ``--apply``); by default ``EXPLAIN_DIR/repair``;
* a gate directory: ``gate_decision.json``;
* a run directory (what the demo writes and ``recon report --from`` reads): ``diff/``,
  ``explain/``, ``repair/``, ``diff-after/``, ``cost.json``, ``report.html``;
* an incremental state (``recon diff --state DIR``, :class:`StateDirectory`): ``state.json`` (the
  index: boundaries, per side each segment's pack, offset, row count and digest, the watermarks,
  the totals), ``lock``, ``segments/{source,target}/G-NNNNNN.arrow`` (packs: one side's canonical
  rows of consecutive segments, uncompressed Arrow IPC), ``differences/G.parquet`` (the
  differences of every segment);
* a watch directory (``recon watch --out DIR``, :class:`WatchDirectory`): ``watch.lock``,
  ``cycles/NNNNNN/`` per completed cycle (``diff/``, ``explain/`` when it ran, ``gate/``,
  ``gate-lag/`` when lag is configured, ``openlineage/``, and ``cycle.json`` written last), and at
  most one ``cycles/.partial-NNNNNN/`` of a cycle under way (or killed: removed at the next start).
"""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.core.errors import UsageError, VerificationError

SUMMARY = "summary.json"
DIFFERENCES = "differences.parquet"
EXPLAIN = "explain.json"
FINDINGS = "findings.parquet"
PLAN = "plan.json"
ACTION_LIST_JSON = "action_list.json"
ACTION_LIST_CSV = "action_list.csv"
REPAIR = "repair.json"
GATE_DECISION = "gate_decision.json"
COST = "cost.json"
MANIFEST = "manifest.json"  # by convention: the signed manifest of the run that wrote a directory
REPORT = "report.html"


class _Parquet(Protocol):
    def write_parquet(self, file: Path) -> Any: ...


def write_json(path: Path, obj: Any) -> Path:
    """One JSON document (sorted keys, decimals and times as strings), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON value")


def read_json(path: Path, *, what: str, fix: str) -> dict[str, Any]:
    """A JSON object, or a one-line usage error naming the file and how to get a good one."""
    try:
        # NaN and Infinity are not JSON: refused, as a nesting deeper than the parser's stack
        doc = json.loads(path.read_text(), parse_constant=_not_json)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise UsageError(f"{path} is not valid JSON: {fix}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path} is not {what}: {fix}")
    return doc


# -- verification ----------------------------------------------------------------------------------
def digests(files: Iterable[Path]) -> dict[str, str]:
    """SHA-256 of each existing file, by the name the ledger and manifests record it under."""
    from engine.evidence.manifest import file_digest

    return {f.name: file_digest(f) for f in files if f.is_file()}


def check_digests(files: Iterable[Path], expected: dict[str, str], *, against: str) -> None:
    """Every file must exist and hash to the digest recorded for its name in ``expected`` (from the
    ledger or a verified manifest, as the use case found them): a decision rests on these bytes, so
    the first file that does not match is named (exit 4). ``against`` says where the expected
    digests came from, for the message."""
    from engine.evidence.manifest import file_digest

    for f in files:
        if not f.is_file():
            raise VerificationError(f"{f} does not exist: the artefact directory is incomplete")
        want = expected.get(f.name)
        if want is None:
            raise VerificationError(f"{f} is not recorded in {against}: use the directory that run wrote")
        got = file_digest(f)
        if got != want:
            raise VerificationError(f"{f} does not match {against} (sha256 {got[:16]}…, recorded {want[:16]}…): "
                                    "it changed after it was written; rerun the step that wrote it")


def manifest_path(directory: Path) -> Path:
    """Where the signed manifest of the run that wrote ``directory`` is looked for."""
    return Path(directory) / MANIFEST


# -- diff ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffOutput:
    """The directory of ``recon diff --out``."""

    dir: Path

    @property
    def summary_path(self) -> Path:
        return self.dir / SUMMARY

    @property
    def differences_path(self) -> Path:
        return self.dir / DIFFERENCES

    def exists(self) -> bool:
        return self.summary_path.is_file()

    def files(self) -> list[Path]:
        """The files a reader relies on: what verification checks."""
        return [self.summary_path, self.differences_path]

    def write(self, summary: dict[str, Any], differences: _Parquet) -> dict[str, Path]:
        """The summary is replaced last, so a directory with a new summary has its differences too."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        differences.write_parquet(self.differences_path)
        os.replace(tmp, self.summary_path)
        return {"summary": self.summary_path, "differences": self.differences_path}

    def load_summary(self) -> dict[str, Any]:
        """The summary, checked to be a diff's; both files must be there."""
        sp, dp = self.summary_path, self.differences_path
        if not sp.is_file() or not dp.is_file():
            raise UsageError(f"{self.dir} is not a diff output (no {SUMMARY}/{DIFFERENCES}): "
                             "run `recon diff … --out DIR` first")
        try:
            summary = json.loads(sp.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{sp} is not valid JSON: rerun `recon diff … --out DIR`") from None
        if not isinstance(summary, dict) or "variance_ratio" not in summary:
            raise UsageError(f"{sp} is not a recon diff summary (no variance_ratio)")
        return summary


# -- explain ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExplainOutput:
    """The directory of ``recon explain --out``."""

    dir: Path

    @property
    def summary_path(self) -> Path:
        return self.dir / EXPLAIN

    @property
    def findings_path(self) -> Path:
        return self.dir / FINDINGS

    def exists(self) -> bool:
        return self.summary_path.is_file() and self.findings_path.is_file()

    def files(self) -> list[Path]:
        """The files a reader relies on: what verification checks."""
        return [self.summary_path, self.findings_path]

    def write(self, summary: dict[str, Any], findings: _Parquet) -> dict[str, Path]:
        self.dir.mkdir(parents=True, exist_ok=True)
        findings.write_parquet(self.findings_path)
        tmp = self.summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.summary_path)
        return {"summary": self.summary_path, "findings": self.findings_path}

    def require(self) -> None:
        if not self.exists():
            raise UsageError(f"{self.dir} is not an explain output (no {EXPLAIN}/{FINDINGS}): run "
                             "`recon explain --diff DIR --out DIR` first")

    def load_summary(self) -> dict[str, Any]:
        return read_json(self.summary_path, what="an explain summary", fix="rerun `recon explain`")

    def diff_dir(self, recorded: str | None = None, override: Path | None = None) -> Path | None:
        """The diff this explain read: ``override``, else the path ``explain.json`` recorded (as
        given, relative to this directory, or as a sibling of it: the run directory's layout)."""
        if override is not None:
            return override
        if recorded is None:
            recorded = self.load_summary().get("diff") if self.summary_path.is_file() else None
        if not recorded:
            return None
        p = Path(recorded)
        for cand in (p, self.dir / p, self.dir.parent / p.name):
            if DiffOutput(cand).exists():
                return cand
        return None


# -- repair ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepairOutput:
    """The directory of ``recon repair`` (``--out``, or ``EXPLAIN_DIR/repair`` after ``--apply``)."""

    dir: Path

    @classmethod
    def default_for(cls, explain_dir: Path) -> RepairOutput:
        return cls(Path(explain_dir) / "repair")

    @property
    def plan_path(self) -> Path:
        return self.dir / PLAN

    @property
    def report_path(self) -> Path:
        return self.dir / REPAIR

    def exists(self) -> bool:
        return self.plan_path.is_file()

    def files(self) -> list[Path]:
        """The files a reader relies on: the plan, its action list (the proof the owners were told)
        and, after ``--apply``, the report."""
        out = [self.plan_path, self.dir / ACTION_LIST_JSON, self.dir / ACTION_LIST_CSV]
        return out + ([self.report_path] if self.report_path.is_file() else [])

    def write(self, plan: dict[str, Any], action_list: dict[str, Any], action_rows: Iterable[dict[str, Any]],
              action_fields: Sequence[str], report: dict[str, Any] | None) -> list[Path]:
        """plan.json, action_list.json and .csv, and repair.json when the repair was applied."""
        self.dir.mkdir(parents=True, exist_ok=True)
        written = [write_json(self.plan_path, plan), write_json(self.dir / ACTION_LIST_JSON, action_list)]
        cp = self.dir / ACTION_LIST_CSV
        tmp = cp.with_name(cp.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(action_fields), extrasaction="ignore")
            w.writeheader()
            for r in action_rows:
                w.writerow({k: r.get(k) for k in action_fields})
        os.replace(tmp, cp)
        written.append(cp)
        if report is not None:
            written.append(write_json(self.report_path, report))
        return written


# -- gate ------------------------------------------------------------------------------------------
def gate_decision_path(directory: Path) -> Path:
    return Path(directory) / GATE_DECISION


# -- a run directory (the demo's recon-out/, `recon report --from`) --------------------------------
@dataclass(frozen=True)
class RunDirectory:
    """One reconciliation's outputs side by side."""

    root: Path

    @property
    def diff(self) -> DiffOutput:
        return DiffOutput(self.root / "diff")

    @property
    def diff_after(self) -> DiffOutput:
        return DiffOutput(self.root / "diff-after")

    @property
    def explain(self) -> ExplainOutput:
        return ExplainOutput(self.root / "explain")

    @property
    def repair_dir(self) -> Path:
        return self.root / "repair"

    @property
    def cost_path(self) -> Path:
        return self.root / COST

    @property
    def report_path(self) -> Path:
        return self.root / REPORT

    @staticmethod
    def sibling_diff(explain_dir: Path) -> DiffOutput:
        """The diff next to an explain directory in a run directory (``../diff``)."""
        return DiffOutput(Path(explain_dir).parent / "diff")


# -- incremental state -------------------------------------------------------------------------------
STATE_INDEX = "state.json"
STATE_LOCK = "lock"


@dataclass(frozen=True)
class StateDirectory:
    """The state an incremental diff keeps between runs (``recon diff --state DIR``).

    Files are immutable once written: a run writes the segments it touched and the differences
    under a new generation's names, then replaces ``state.json`` atomically, then removes the files
    the index no longer names. A run killed at any point leaves the previous index and every file it
    names intact (the next run removes the orphans), so a restart always starts from one whole state.
    ``state.json`` records each segment's pack, offset, rows and BLAKE3 Merkle digest; a segment's
    rows are checked against that digest before they are used.
    """

    dir: Path

    @property
    def index_path(self) -> Path:
        return self.dir / STATE_INDEX

    def exists(self) -> bool:
        return self.index_path.is_file()

    def segment_path(self, side: str, generation: int, segment: int) -> Path:
        return self.dir / "segments" / side / f"{generation:06d}-{segment:06d}.arrow"

    def free_segment_number(self, side: str, generation: int) -> int:
        """A pack number of ``generation`` that no file on ``side`` has yet (one past the highest)."""
        d = self.dir / "segments" / side
        tails = [p.stem.split("-", 1)[1] for p in d.glob(f"{generation:06d}-*.arrow")] if d.is_dir() else []
        return max((int(t) for t in tails if t.isascii() and t.isdigit()), default=-1) + 1

    def differences_path(self, generation: int) -> Path:
        return self.dir / "differences" / f"{generation:06d}.parquet"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.dir).as_posix()

    def resolve(self, name: str) -> Path:
        """A file named by the index, refusing a name that would leave the directory (a tampered index)."""
        p = (self.dir / name).resolve()
        if self.dir.resolve() not in p.parents:
            raise VerificationError(f"{self.index_path} names {name!r}, outside the state directory: "
                                    "it was tampered with; rebuild it with --full")
        return p

    def lock(self) -> Any:
        """An exclusive lock on the state for this process's run (released when the process ends,
        even by SIGKILL): a second run on the same state is a one-line error, not a race."""
        return _exclusive_lock(self.dir / STATE_LOCK, f"{self.dir} is in use by another run (its lock is held): "
                               "wait for it, or give each concurrent run its own --state")

    def load_index(self) -> dict[str, Any] | None:
        if not self.exists():
            if self.index_path.exists() or self.index_path.is_symlink():  # a directory, a FIFO, a dangling link
                raise VerificationError(f"{self.index_path} is not a regular file: remove it (or the state) and "
                                        "rerun with --full")
            return None
        return read_json(self.index_path, what="an incremental state",
                         fix="remove the directory or rerun with --full to rebuild it")

    def fresh(self, path: Path) -> Path:
        """``path`` made ready for a file this run writes: inside the state directory, and a new
        regular file of ours (created with ``O_EXCL | O_NOFOLLOW``).

        Why: a run writes under names no index names yet (the next generation's), so whatever sits
        there is a killed run's orphan or was planted. A symlink planted at such a name made the
        write go through it, to a file outside the state. An orphan file or link is removed (a link,
        not what it points at); a directory there is refused. A writer racing this run inside the
        directory between this call and the write is outside what the lock can stop."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise VerificationError(f"{path.parent} is not a directory: remove it (or the state {self.dir}) and "
                                    "rerun with --full") from None
        if self.dir.resolve() not in path.parent.resolve().parents and path.parent.resolve() != self.dir.resolve():
            raise VerificationError(f"{path.parent} leads outside the state directory {self.dir}: remove it and "
                                    "rerun with --full")
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            raise VerificationError(f"{path} is in the way of this run's output (not a regular file): remove it")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        return path

    def durable(self, path: Path) -> None:
        """Make a file written for the next index durable before that index can name it.

        Why: the index is the commit, and it is fsynced; a pack it names that is still only in the
        page cache would be lost by a power cut after the commit, while the commit has already let
        the previous state's packs go. Called by whoever writes the file, in its thread, so the
        flushes overlap the rest of the run instead of queueing behind the commit."""
        _fsync(path)

    def write_index(self, index: dict[str, Any]) -> None:
        """Atomically, and durably before the old files go (``fsync``): the new index is the commit.
        The files it names were made durable as they were written (:meth:`durable`); their
        directories' new entries are made durable here, before the index that names them."""
        segments = self.dir / "segments"
        sides = sorted(p for p in segments.iterdir() if p.is_dir()) if segments.is_dir() else []
        for sub in (*sides, segments, self.dir / "differences"):
            if sub.is_dir():
                _fsync_dir(sub)
        tmp = self.fresh(self.index_path.with_name(STATE_INDEX + ".tmp"))
        with open(tmp, "w") as f:
            f.write(json.dumps(index, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.index_path.is_dir() and not self.index_path.is_symlink():
            raise VerificationError(f"{self.index_path} is a directory: remove it and rerun")
        os.replace(tmp, self.index_path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def collect_garbage(self, keep: Iterable[str]) -> int:
        """Remove every segment and differences file the index does not name (a killed run's
        orphans, the files a run replaced); returns how many."""
        keep_set = {self.resolve(k) for k in keep}
        n = 0
        for sub in ("segments", "differences"):
            root = self.dir / sub
            if not root.is_dir():
                continue
            for f in root.rglob("*"):
                if f.is_file() and f.resolve() not in keep_set:
                    f.unlink()
                    n += 1
        return n


# -- recon watch -----------------------------------------------------------------------------------
WATCH_LOCK = "watch.lock"
CYCLE = "cycle.json"
_PARTIAL = ".partial-"


@dataclass(frozen=True)
class WatchDirectory:
    """Where `recon watch` keeps its cycles: ``cycles/NNNNNN/`` per completed cycle.

    A cycle is written under ``cycles/.partial-NNNNNN`` and renamed to its number only after its
    ``cycle.json`` is written (and synced): a cycle killed at any point leaves no directory that
    counts as completed, and the next start removes what it left. The next cycle's number is one
    more than the last completed one's, so a restart redoes the killed cycle under its number."""

    dir: Path

    @property
    def cycles_dir(self) -> Path:
        return self.dir / "cycles"

    def cycle_dir(self, n: int) -> Path:
        return self.cycles_dir / f"{n:06d}"

    def partial_dir(self, n: int) -> Path:
        return self.cycles_dir / f"{_PARTIAL}{n:06d}"

    @staticmethod
    def diff(cycle: Path) -> DiffOutput:
        return DiffOutput(cycle / "diff")

    @staticmethod
    def explain(cycle: Path) -> ExplainOutput:
        return ExplainOutput(cycle / "explain")

    @staticmethod
    def gate_dir(cycle: Path, lag: bool = False) -> Path:
        return cycle / ("gate-lag" if lag else "gate")

    @staticmethod
    def lineage_dir(cycle: Path) -> Path:
        return cycle / "openlineage"

    def lock(self) -> Any:
        """An exclusive lock on the directory for this watcher's life (released when the process
        ends, even by SIGKILL): a second watcher on one directory is a one-line error."""
        return _exclusive_lock(self.dir / WATCH_LOCK, f"{self.dir} is in use by another `recon watch` (its "
                               f"{WATCH_LOCK} is held): stop it first, or give this one its own --out")

    def completed(self) -> list[int]:
        """The numbers of the completed cycles, in order."""
        if not self.cycles_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.cycles_dir.iterdir()
                      if p.name.isascii() and p.name.isdigit() and (p / CYCLE).is_file())

    def last_completed(self) -> int | None:
        done = self.completed()
        return done[-1] if done else None

    def remove_partials(self) -> int:
        """Remove what killed cycles left (under the lock: no live cycle writes there); returns how many."""
        import shutil

        if not self.cycles_dir.is_dir():
            return 0
        gone = [p for p in self.cycles_dir.iterdir() if p.name.startswith(_PARTIAL)]
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        return len(gone)

    def begin(self, n: int) -> Path:
        """A fresh, empty directory for cycle ``n`` under way."""
        import shutil

        p = self.partial_dir(n)
        if p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True)
        return p

    def complete(self, partial: Path, n: int, cycle: dict[str, Any]) -> Path:
        """Write ``cycle.json`` last, durably, then rename the cycle to its number: the commit."""
        path = write_json(partial / CYCLE, cycle)
        _fsync(path)
        final = self.cycle_dir(n)
        os.replace(partial, final)
        _fsync_dir(self.cycles_dir)
        return final

    def load_cycle(self, n: int) -> dict[str, Any]:
        return read_json(self.cycle_dir(n) / CYCLE, what="a watch cycle",
                         fix=f"remove {self.cycle_dir(n)} (the next cycle then compares with the one before)")

    def prune(self, keep: int) -> int:
        """Remove all but the ``keep`` newest completed cycles (oldest first); returns how many."""
        import shutil

        done = self.completed()
        old = done[:-keep] if keep > 0 else done
        for n in old:
            shutil.rmtree(self.cycle_dir(n), ignore_errors=True)
        return len(old)


def _exclusive_lock(path: Path, busy: str) -> Any:
    """``path`` opened and locked exclusively (``flock``, released when the process ends, even by
    SIGKILL), or a one-line usage error: ``busy`` when another process holds it, the reason when it
    cannot be a lock file (a directory, a FIFO, a link: never followed, so a planted link cannot
    make the lock create or open a file elsewhere)."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644), "a+")
    except OSError as exc:
        raise UsageError(f"{path} cannot be opened as a lock ({exc.strerror}): remove it, or use a directory "
                         "recon can write") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UsageError(busy) from None
    except OSError as exc:
        f.close()
        raise UsageError(f"{path} cannot be locked ({exc.strerror}): remove it, or use a directory recon can "
                         "write") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise UsageError(f"{path} is not a regular file, so it cannot be the lock: remove it")
    return f


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
