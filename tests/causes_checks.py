"""The check of issue 20's acceptance, shared by the default-suite test (causes made by
``engine.local.causes`` on the session broker, test_scenario_causes.py, explain's Kafka half in process) and the slow one
(``recon scenario load --cause X`` → ``recon diff`` → ``recon explain``): every duplicated delivery
of the ground truth gets the cause the scenario gave it, and the evidence is what the scenario did."""

from __future__ import annotations

from collections import Counter
from typing import Any


def _windows(kafka: dict[str, Any]) -> list[dict[str, Any]]:
    return [*kafka["windows"], *kafka["redelivery_windows"]]


def _where(copy: dict[str, Any]) -> int:
    """The offset at which explain sees a ground-truth copy as the extra delivery. An aborted copy is
    the first of the event's two messages (the retry came after it), so the topic's duplicate is
    the retry: the copy's ``original_offset``."""
    return int(copy["original_offset"] if copy["cause"] == "aborted_read_uncommitted" else copy["offset"])


def check_causes(truth: dict[str, Any], exp: dict[str, Any]) -> None:
    """Every ground-truth copy lies in one window of explain whose only cause is the copy's, the
    deliveries per (partition, cause) are equal, and the evidence is what the scenario did."""
    kafka = exp["kafka"]
    windows = _windows(kafka)
    copies = truth["copies"]
    assert copies
    for c in copies:
        (w,) = [w for w in windows if w["partition"] == c["partition"]
                and w["first_offset"] <= _where(c) <= w["last_offset"]]
        assert [x["cause"] for x in w["causes"]] == [c["cause"]], (c, w["causes"])
    got: Counter[tuple[int, str]] = Counter()
    for w in windows:
        for x in w["causes"]:
            got[(w["partition"], x["cause"])] += x["events"]
    assert got == Counter((c["partition"], c["cause"]) for c in copies)
    assert kafka["causes"] == dict(Counter(c["cause"] for c in copies)) and "unknown" not in kafka["causes"]
    by_p: dict[int, list[dict[str, Any]]] = {}
    for c in copies:
        by_p.setdefault(c["partition"], []).append(c)
    for p, cs in by_p.items():
        (cause,) = {c["cause"] for c in cs}
        offs = sorted(_where(c) for c in cs)
        evidence = [e for w in windows if w["partition"] == p for x in w["causes"] for e in x["evidence"]]
        if cause == "offset_rewind":  # the commit past the window, then the reset to its start
            assert [(e["kind"], e["from_offset"], e["to_offset"]) for e in evidence] == [
                ("commit_record", offs[-1] + 1, offs[0])]
        elif cause == "redelivery_before_commit":  # the window: between the last commit and the next owner's
            assert [(e["kind"], e["from_offset"], e["to_offset"]) for e in evidence] == [
                ("generation", offs[0], offs[-1] + 1)]
        elif cause == "aborted_read_uncommitted":  # the aborted transaction's messages
            aborted = sorted(c["offset"] for c in cs)
            assert [(e["kind"], e["from_offset"], e["to_offset"], e["events"]) for e in evidence] == [
                ("aborted_offsets", aborted[0], aborted[-1], len(aborted))]
        else:  # the copies under another producer id than their originals, read from the record batches
            assert evidence and all(e["kind"] == "producer_ids" and e["source"] == "record_batch"
                                    and e["producer_id"] != e["original"]["producer_id"] for e in evidence)
            assert sorted(o for e in evidence for o in range(e["from_offset"], e["to_offset"] + 1)) == offs
