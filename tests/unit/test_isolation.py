"""The rules of the isolation check and the producer runs (engine.core.isolation), without a broker:
what an aborted run is, when a transaction counts as open, where a producer run breaks."""

from __future__ import annotations

from engine.core.isolation import Batch, IsolationRead, aborted_runs, producer_runs


def test_aborted_offsets_form_runs_that_markers_do_not_break_and_committed_offsets_do() -> None:
    # 0-2 committed, 3-5 aborted, 6 abort marker (in neither read), 7-8 aborted, 9 committed, 10 aborted
    r = IsolationRead(partition=1, uncommitted=[0, 1, 2, 3, 4, 5, 7, 8, 9, 10], committed=[0, 1, 2, 9],
                      last_stable=12, high_watermark=12)
    aborted, open_tx = aborted_runs([r])
    assert aborted == [{"partition": 1, "from_offset": 3, "to_offset": 8, "events": 5},
                       {"partition": 1, "from_offset": 10, "to_offset": 10, "events": 1}]
    assert open_tx == []


def test_offsets_above_the_last_stable_offset_are_undecided_not_aborted() -> None:
    # a transaction is open from offset 5: read_committed stopped there, read_uncommitted went on
    r = IsolationRead(partition=0, uncommitted=[0, 1, 2, 3, 4, 5, 6, 7], committed=[0, 1, 2, 4],
                      last_stable=5, high_watermark=8)
    aborted, open_tx = aborted_runs([r])
    assert aborted == [{"partition": 0, "from_offset": 3, "to_offset": 3, "events": 1}]
    assert open_tx == [{"partition": 0, "last_stable_offset": 5, "high_watermark": 8, "undecided": 3}]


def test_a_read_stopped_by_the_window_end_reports_no_open_transaction() -> None:
    r = IsolationRead(partition=2, uncommitted=[10, 11], committed=[10, 11], last_stable=None, high_watermark=None)
    assert aborted_runs([r]) == ([], [])


def _b(p: int, base: int, last: int, pid: int, epoch: int = 0, seq: int = 0, *, control: bool = False,
       tx: bool = False) -> Batch:
    return Batch(partition=p, base_offset=base, last_offset=last, producer_id=pid, producer_epoch=epoch,
                 base_sequence=-1 if control or pid < 0 else seq, records=1 if control else last - base + 1,
                 transactional=tx, control=control)


def test_producer_runs_break_on_a_new_producer_or_epoch_and_on_a_sequence_that_does_not_continue() -> None:
    batches = [
        _b(0, 0, 9, pid=7, seq=0), _b(0, 10, 19, pid=7, seq=10),  # one session, sequence continues
        _b(0, 20, 24, pid=8, seq=0),  # a new producer (a replay job)
        _b(0, 25, 29, pid=8, epoch=1, seq=0),  # the same id, a new epoch
        _b(0, 30, 34, pid=8, epoch=1, seq=0),  # sequence regressed: a copy under the same session
    ]
    runs = producer_runs(batches, {0: (0, 34)})
    assert [(r["from_offset"], r["to_offset"], r["producer_id"], r["producer_epoch"], r["base_sequence"])
            for r in runs] == [(0, 19, 7, 0, 0), (20, 24, 8, 0, 0), (25, 29, 8, 1, 0), (30, 34, 8, 1, 0)]


def test_control_batches_neither_join_nor_break_a_run_and_runs_are_cut_to_the_range() -> None:
    batches = [_b(3, 0, 4, pid=5, seq=0, tx=True), _b(3, 5, 5, pid=5, control=True, tx=True),
               _b(3, 6, 9, pid=5, seq=5, tx=True), _b(3, 10, 10, pid=5, control=True, tx=True),
               _b(4, 0, 99, pid=-1)]  # idempotence off: id, epoch and sequence are -1
    runs = producer_runs(batches, {3: (2, 8), 4: (50, 60)})
    assert runs == [
        {"partition": 3, "from_offset": 2, "to_offset": 8, "producer_id": 5, "producer_epoch": 0, "base_sequence": 0,
         "batches": 2, "transactional": True},
        {"partition": 4, "from_offset": 50, "to_offset": 60, "producer_id": -1, "producer_epoch": 0,
         "base_sequence": -1, "batches": 1, "transactional": False},
    ]


def test_without_idempotence_consecutive_batches_are_one_run() -> None:
    runs = producer_runs([_b(0, 0, 4, pid=-1), _b(0, 5, 9, pid=-1)], {0: (0, 9)})
    assert [(r["from_offset"], r["to_offset"], r["batches"]) for r in runs] == [(0, 9, 2)]
