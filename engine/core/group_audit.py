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

import pyarrow.compute as pc

from engine.core.events import iso_ms
from engine.core.offsets_log import GroupRecords


@dataclass(frozen=True)
class _Commit:
    log_offset: int
    offset: int | None  # None: deleted (tombstone)
    ts: int


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


def _commits_by_partition(records: GroupRecords, topic: str) -> dict[int, list[_Commit]]:
    t = records.commits
    out: dict[int, list[_Commit]] = {}
    for row in t.filter(pc.equal(t["topic"], topic)).to_pylist():
        ts = row["commit_ts"] if row["commit_ts"] is not None else row["record_ts"]
        out.setdefault(row["partition"], []).append(_Commit(row["log_offset"], row["offset"], ts))
    for commits in out.values():
        commits.sort(key=lambda c: c.log_offset)
    return dict(sorted(out.items()))


def rewinds(by_part: dict[int, list[_Commit]]) -> list[dict[str, Any]]:
    out = []
    for p, commits in by_part.items():
        prev: int | None = None
        for c in commits:
            if c.offset is None:
                continue
            if prev is not None and c.offset < prev:
                out.append({"partition": p, "from_offset": prev, "to_offset": c.offset,
                            "committed_at": iso_ms(c.ts), "events_redelivered": prev - c.offset,
                            "log_offset": c.log_offset})
            prev = c.offset
    return out


def rebalances(records: GroupRecords, by_part: dict[int, list[_Commit]]) -> list[dict[str, Any]]:
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
        for p, commits in by_part.items():
            live = [c for c in commits if c.offset is not None]
            before = next((c for c in reversed(live) if c.log_offset < log_offset), None)
            after = next((c for c in live if c.log_offset > log_offset), None)
            if after is None or after.offset is None:
                continue
            start = before.offset if before is not None else None
            if start is not None and after.offset <= start:
                continue  # nothing re-read (or a rewind, reported as such)
            mark = (p, before.log_offset if before is not None else None)
            if mark in attributed:
                continue
            attributed.add(mark)
            uncommitted.append({"partition": p, "from_offset": start, "to_offset": after.offset})
        out.append({"generation": gen, "previous_generation": prev, "time": iso_ms(when), "log_offset": log_offset,
                    "members": members, "uncommitted": uncommitted})
    return out


def coverage(by_part: dict[int, list[_Commit]]) -> dict[str, dict[str, Any]]:
    out = {}
    for p, commits in by_part.items():
        times = [c.ts for c in commits if c.offset is not None]
        if times:
            out[str(p)] = {"first_commit": iso_ms(min(times)), "last_commit": iso_ms(max(times)),
                           "commits": len(times)}
    return out


def audit(records: GroupRecords, topic: str, offsets_partition: int | None = None) -> GroupAudit:
    """The group's rewinds, rebalances and surviving history for ``topic``."""
    by_part = _commits_by_partition(records, topic)
    counts: dict[str, int] = records.counts()
    if offsets_partition is not None:
        counts["partition"] = offsets_partition
    return GroupAudit(records.group, topic, rewinds(by_part), rebalances(records, by_part), coverage(by_part), counts)
