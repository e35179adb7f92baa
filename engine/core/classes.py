"""The finding classes of `recon explain`: every class once, with all that recon decides by class.

A class names why one record differs between Salesforce and the warehouse. Several parts of recon
act on it: forensics tries the classes' rules in a fixed order, the gate may exclude some of them,
repair corrects, lists or leaves each, the report labels them, the scenario plants them and the demo
reasons about them. Each of those reads this list, so adding a class is one entry here, plus its
rule in :func:`engine.core.forensics.class_rules` (and, for the scenario to plant it, a way to plant
it in :mod:`engine.local.scenario`); ``tests/unit/test_classes.py`` holds every consumer to it.

The list's order is the order classes are reported in (``explain.json``, the report, the scenario's
ground truth); ``rank`` is the order forensics tries their rules in, which is not the same (a
missing warehouse row is recognised first, whatever the values say).

The functions read :data:`CLASSES` when called, never at import, so a class added to the list (a
test monkeypatching one in, too) is seen everywhere at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class Repair(Enum):
    """What `recon repair` does with a class's records."""

    CORRECT = "correct"  # a new version of the warehouse row, from Salesforce's re-extracted value
    ACTION_LIST = "action_list"  # the warehouse is right: the owners get an action list, nothing is changed
    LEAVE = "leave_alone"  # reported for a person, never changed automatically


#: the systems a class can blame; None (in ``at_fault``) is "not known"
SYSTEMS = ("warehouse", "stream", "salesforce")


@dataclass(frozen=True)
class FindingClass:
    """One class.

    name: as it appears in ``findings.parquet``, ``explain.json`` and every other output.
    label: a few words for a person, shown next to the name in the report.
    description: one sentence: what happened to the record.
    rule: the triangulation predicate in words, over Salesforce (s), the warehouse (w), the raw
      stream sum (r, every delivered copy) and the deduplicated stream sum (d).
    rank: where forensics tries the rule (1 first); the highest rank is the fallback, "anything
      else", whose rule is never evaluated.
    at_fault: the system holding the wrong value (one of :data:`SYSTEMS`), None when unknown. The
      true value of a record is Salesforce's unless Salesforce is at fault (then the stream's
      deduplicated sum); rebuilding the warehouse from the deduplicated stream leaves exactly the
      records the stream or Salesforce is wrong about.
    warehouse_row: whether the warehouse has a row for the record (repair inserts instead of
      versioning when it has none).
    excludable: whether `recon gate --exclude-from` may leave the class's records out of its ratios.
    accepted_by_default: whether it does so without ``--accept-classes`` naming the class.
    repair: what `recon repair` does with the class's records.
    """

    name: str
    label: str
    description: str
    rule: str
    rank: int
    at_fault: str | None
    repair: Repair
    excludable: bool = False
    accepted_by_default: bool = False
    warehouse_row: bool = True

    def __post_init__(self) -> None:
        if self.at_fault is not None and self.at_fault not in SYSTEMS:
            raise ValueError(f"class {self.name}: at_fault {self.at_fault!r} is not one of {', '.join(SYSTEMS)}")
        if self.accepted_by_default and not self.excludable:
            raise ValueError(f"class {self.name}: accepted by default but not excludable")
        if self.excludable and self.repair is Repair.CORRECT:
            raise ValueError(f"class {self.name}: repair corrects it, so the gate may not exclude it "
                             "(corrected, not waived)")


CLASSES: tuple[FindingClass, ...] = (
    FindingClass(
        "duplicate_inflation", "warehouse counted re-delivered events twice",
        "The warehouse summed events the stream delivered more than once.",
        "w == r, r != d and d == s", rank=2, at_fault="warehouse", repair=Repair.CORRECT),
    FindingClass(
        "missing_events", "warehouse lacks events Salesforce has",
        "Events Salesforce saw never reached the topic, so the warehouse lacks them.",
        "w == d < s and Salesforce saw everything the stream has", rank=4, at_fault="stream",
        repair=Repair.CORRECT),
    FindingClass(
        "stale_salesforce", "Salesforce itself is behind the stream",
        "Salesforce has not seen the record's latest events; the warehouse is right.",
        "w == d != s and Salesforce's last-change stamp (the modstamp role) predates the record's last event in the stream",
        rank=3, at_fault="salesforce", repair=Repair.ACTION_LIST, excludable=True, accepted_by_default=True),
    FindingClass(
        "warehouse_only_drift", "warehouse changed outside the stream",
        "The warehouse value was changed outside the stream (a manual patch, another writer).",
        "w differs from both stream sums (w != r and w != d)", rank=5, at_fault="warehouse",
        repair=Repair.CORRECT),
    FindingClass(
        "missing_in_warehouse", "account absent from the warehouse",
        "The warehouse has no row for a record Salesforce has.",
        "the diff found no warehouse row", rank=1, at_fault="warehouse", repair=Repair.CORRECT,
        warehouse_row=False),
    FindingClass(
        "unexplained", "no explanation found",
        "No rule explains the difference (or the key is duplicated): a person has to look.",
        "anything else, and every duplicated key", rank=6, at_fault=None, repair=Repair.LEAVE,
        excludable=True),
)


# -- lookups (read CLASSES when called) -----------------------------------------------------------
def names() -> tuple[str, ...]:
    """Every class name, in reporting order."""
    return tuple(c.name for c in CLASSES)


def get(name: str | None) -> FindingClass | None:
    return next((c for c in CLASSES if c.name == name), None)


def triangulation() -> tuple[FindingClass, ...]:
    """The classes in the order forensics tries their rules; the last one is the fallback."""
    return tuple(sorted(CLASSES, key=lambda c: c.rank))


def fallback() -> FindingClass:
    """The class of a record no rule explains."""
    return triangulation()[-1]


def explained() -> tuple[str, ...]:
    """The classes a rule recognises (all but the fallback), in reporting order: what can be planted."""
    last = fallback().name
    return tuple(c.name for c in CLASSES if c.name != last)


def label(name: str) -> str:
    """The label of a class; "" for a name that is not a class."""
    c = get(name)
    return c.label if c is not None else ""


def ordered(present: Iterable[str]) -> list[str]:
    """The names in ``present`` (e.g. the keys of a dict of counts): classes in reporting order, then
    names that are no class, sorted."""
    known = names()
    keys = list(present)
    return [c for c in known if c in keys] + sorted(c for c in keys if c not in known)


# -- the gate's policy ----------------------------------------------------------------------------
def excludable() -> tuple[str, ...]:
    """Classes `recon gate --exclude-from` may leave out of its ratios."""
    return tuple(c.name for c in CLASSES if c.excludable)


def accepted_by_default() -> tuple[str, ...]:
    """Classes it leaves out when ``--accept-classes`` is not given."""
    return tuple(c.name for c in CLASSES if c.accepted_by_default)


# -- repair's policy ------------------------------------------------------------------------------
def with_repair(action: Repair) -> tuple[str, ...]:
    """Classes whose records repair handles with ``action``, in reporting order."""
    return tuple(c.name for c in CLASSES if c.repair is action)


def repair_of(name: str | None) -> Repair:
    """What repair does with a record of this class; a name that is no class is left alone."""
    c = get(name)
    return c.repair if c is not None else Repair.LEAVE


def has_warehouse_row(name: str | None) -> bool:
    """Whether a record of this class has a warehouse row (a name that is no class: assumed so)."""
    c = get(name)
    return c.warehouse_row if c is not None else True


# -- blame ----------------------------------------------------------------------------------------
def at_fault(*systems: str) -> tuple[str, ...]:
    """Classes whose wrong value is held by one of ``systems``, in reporting order."""
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown system(s) {', '.join(sorted(unknown))}: use {', '.join(SYSTEMS)}")
    return tuple(c.name for c in CLASSES if c.at_fault in systems)
