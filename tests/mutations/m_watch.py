"""Issue 19, `recon watch`: each mutation breaks one rule of the watch loop (schedule, new
differences, signals, one watcher per directory, cycle numbering), and the named tests must fail."""

from __future__ import annotations

from tests.mutations import Mutation

_UNIT = "tests/unit/test_watch_schedule.py"
_IT = "tests/integration/test_watch.py"

MUTATIONS = [
    Mutation("watch-overlap", "engine/core/watch.py",
             "return max(started + every, ended)",
             "return started + every",
             (f"{_UNIT}::test_an_overrun_cycle_is_followed_right_away_and_only_once",
              f"{_UNIT}::test_the_loop_never_overlaps_nor_piles_up_after_an_overrun"),
             "a cycle that overran its period is followed by one scheduled before it ended (overlap)"),
    Mutation("watch-every-unicode-digits", "engine/core/watch.py",
             '_EVERY = re.compile(r"([0-9]{1,7})([smh])", re.ASCII)',
             '_EVERY = re.compile(r"(\\d{1,7})([smh])")',
             (f"{_UNIT}::test_hostile_every_is_a_usage_error_naming_the_fix",),
             "--every accepts non-ASCII digits (int() reads them: a hostile period is not refused)"),
    Mutation("watch-every-difference-is-new", "engine/core/watch.py",
             "    if previous is None:\n        return current\n",
             "    if True:\n        return current\n",
             (f"{_UNIT}::test_new_differences_are_those_the_previous_cycle_did_not_have",
              f"{_IT}::test_once_runs_one_cycle_and_exits_with_the_gates_code"),
             "explain is given every difference each cycle, not only those new since the previous one"),
    Mutation("watch-sigterm-keeps-gate-code", "engine/app/watch.py",
             '            if stopper.wait(nxt - clock()):\n                out.stopped_by, out.exit_code = "signal", Exit.OK\n',
             '            if stopper.wait(nxt - clock()):\n                out.stopped_by = "signal"\n',
             (f"{_IT}::test_cycles_run_every_period_without_overlap_and_sigterm_stops_cleanly",),
             "a SIGTERM while waiting ends the watch with the last gate's code instead of a clean exit 0"),
    Mutation("watch-no-directory-lock", "engine/app/watch.py",
             "with stopper.installed(), _held(ctx.wd):",
             "with stopper.installed():",
             (f"{_IT}::test_a_second_watcher_on_one_directory_is_refused",),
             "two watchers may share one directory (and write the same cycle numbers)"),
    Mutation("watch-cycle-number-skips", "engine/app/watch.py",
             "n = (ctx.wd.last_completed() or 0) + 1",
             "n = (ctx.wd.last_completed() or 0) + 2",
             (f"{_IT}::test_once_runs_one_cycle_and_exits_with_the_gates_code",
              f"{_IT}::test_sigkill_at_random_points_restarts_consistently"),
             "a (re)start leaves a gap in the cycle numbers instead of redoing the unfinished cycle"),
]
MUTATIONS.append(
    Mutation("watch-cycle-counts-without-cycle-json", "engine/workspace.py",
             "if p.name.isascii() and p.name.isdigit() and (p / CYCLE).is_file())",
             "if p.name.isascii() and p.name.isdigit())",
             (f"{_UNIT}::test_a_cycle_counts_only_once_renamed_after_its_cycle_json",),
             "a numbered cycle directory without its cycle.json (not committed) counts as completed"))
