"""What a consumer group's records in ``__consumer_offsets`` say about re-delivered events (no I/O).

Input: one group's decoded records (:class:`engine.core.offsets_log.GroupRecords`) in log order;
commits and group-metadata records of a group share one partition of the topic, so their log
offsets order them against each other exactly. Output, for one topic of the group:

* ``rewinds[]``: a commit lower than the partition's previous commit (a reset, a restore, a lost
  commit). The events between the two offsets are delivered again to the group:
  ``events_redelivered`` = from − to, counted on the offsets (transaction markers occupy offsets
  too, so on a transactional topic this is an upper bound). A deletion (tombstone) between the two
  does not hide a rewind: the deletion is how the group lost its position.
* ``rebalances[]``: a generation change of a group that had members (the old owners could have
  processed events they had not committed). Per partition, ``uncommitted`` is the range between the
  last commit before the change (``from_offset``; where the next owner resumed, or null when the
  group had never committed it: the next owner started where ``auto.offset.reset`` put it) and the
  first commit after it (``to_offset``): the events re-read after the change. What the old owner
  had processed beyond its last commit is not written anywhere in ``__consumer_offsets``, so the
  range is the most the log can prove re-read, not a count of copies. A partition's range is listed
  once, under the first change after its last commit (later changes before the next commit would
  repeat it); a change after which the partition was not committed again has no range for it.
  KIP-848 (``group.protocol=consumer``) groups write no classic metadata records: no rebalances.
* ``history_coverage``: per partition, the first and last commit time that survived compaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from engine.core.events import iso_ms
from engine.core.offsets_log import GroupRecords


@dataclass(frozen=True)
class _Commits:
    """One partition's surviving commits (deletions left out), in log order, as columns."""

    log_offset: np.ndarray
    offset: np.ndarray
    ts: np.ndarray


@dataclass
class GroupAudit:
    group: str
    topic: str
    rewinds: list[dict[str, Any]]
    rebalances: list[dict[str, Any]]
    history_coverage: dict[str, dict[str, Any]]
    offsets_records: dict[str, int]

    def summary(self) -> dict[str, Any]:
        return {"group": self.group, "rewinds": self.rewinds, "rebalances": self.rebalances,
                "history_coverage": self.history_coverage, "offsets_records": self.offsets_records}


def _commits_by_partition(records: GroupRecords, topic: str) -> dict[int, _Commits]:
    t = records.commits
    t = t.filter(pc.and_(pc.equal(t["topic"], topic), pc.is_valid(t["offset"])))
    if t.num_rows == 0:
        return {}
    parts = t["partition"].to_numpy()
    log_offset = t["log_offset"].to_numpy()
    offset = t["offset"].to_numpy()
    ts = pc.coalesce(t["commit_ts"], t["record_ts"]).to_numpy()
    order = np.lexsort((log_offset, parts))
    parts, log_offset, offset, ts = parts[order], log_offset[order], offset[order], ts[order]
    uniq, starts = np.unique(parts, return_index=True)
    ends = [*starts[1:], len(parts)]
    return {int(p): _Commits(log_offset[a:b], offset[a:b], ts[a:b]) for p, a, b in zip(uniq, starts, ends, strict=True)}


def rewinds(by_part: dict[int, _Commits]) -> list[dict[str, Any]]:
    out = []
    for p, c in by_part.items():
        for i in np.flatnonzero(c.offset[1:] < c.offset[:-1]) + 1:
            prev, now = int(c.offset[i - 1]), int(c.offset[i])
            out.append({"partition": p, "from_offset": prev, "to_offset": now,
                        "committed_at": iso_ms(int(c.ts[i])), "events_redelivered": prev - now,
                        "log_offset": int(c.log_offset[i])})
    return out


def rebalances(records: GroupRecords, by_part: dict[int, _Commits]) -> list[dict[str, Any]]:
    changes: list[tuple[int, int, int, int | None, list[str]]] = []  # log offset, time, gen, prev gen, members
    prev_gen: int | None = None
    prev_members = 0
    for log_offset, record_ts, gm in records.metadata:
        if gm is None:  # the group was removed
            prev_gen, prev_members = None, 0
            continue
        if prev_gen is not None and gm.generation != prev_gen and prev_members > 0:
            when = gm.current_state_timestamp if gm.current_state_timestamp >= 0 else record_ts
            changes.append((log_offset, when, gm.generation, prev_gen, [m.member_id for m in gm.members]))
        prev_gen, prev_members = gm.generation, len(gm.members)
    out = []
    attributed: set[tuple[int, int | None]] = set()  # (partition, log offset of the last commit before)
    for log_offset, when, gen, prev, members in changes:
        uncommitted = []
        for p, c in by_part.items():
            i = int(np.searchsorted(c.log_offset, log_offset))  # commits before the change: [:i]
            if i >= len(c.offset):
                continue  # not committed again after the change
            start = int(c.offset[i - 1]) if i > 0 else None
            end = int(c.offset[i])
            if start is not None and end <= start:
                continue  # nothing re-read (or a rewind, reported as such)
            mark = (p, int(c.log_offset[i - 1]) if i > 0 else None)
            if mark in attributed:
                continue
            attributed.add(mark)
            uncommitted.append({"partition": p, "from_offset": start, "to_offset": end})
        out.append({"generation": gen, "previous_generation": prev, "time": iso_ms(when), "log_offset": log_offset,
                    "members": members, "uncommitted": uncommitted})
    return out


def coverage(by_part: dict[int, _Commits]) -> dict[str, dict[str, Any]]:
    return {str(p): {"first_commit": iso_ms(int(c.ts.min())), "last_commit": iso_ms(int(c.ts.max())),
                     "commits": len(c.ts)} for p, c in by_part.items()}


def audit(records: GroupRecords, topic: str, offsets_partition: int | None = None) -> GroupAudit:
    """The group's rewinds, rebalances and surviving history for ``topic``."""
    by_part = _commits_by_partition(records, topic)
    counts: dict[str, int] = records.counts()
    if offsets_partition is not None:
        counts["partition"] = offsets_partition
    return GroupAudit(records.group, topic, rewinds(by_part), rebalances(records, by_part), coverage(by_part), counts)
