"""Issue 20's last mile: explain's causes from all the evidence. Each mutation breaks one link of
scenario → broker → explain, and the default-suite test of the mixed scenario (or the unit test of
the rule) must catch it. The slow CLI sweep (tests/integration/test_causes_e2e.py) checks the same
through `recon explain`; it is left out here, as it takes minutes per run."""

from __future__ import annotations

from tests.mutations import Mutation

MIXED = "tests/integration/test_scenario_causes.py::test_explain_gives_every_copy_of_the_mixed_scenario_its_cause"
UNIT = "tests/unit/test_causes.py"

MUTATIONS = [
    Mutation("scan-read-committed-with-group", "engine/app/explain.py",
             'return "read_uncommitted" if group else "read_committed"', 'return "read_committed"',
             (MIXED, f"{UNIT}::test_explain_scans_as_the_warehouse_reads_with_a_group_unless_told"),
             "with a group explain scans read_committed: the aborted copies the warehouse applied are invisible"),
    Mutation("user-isolation-ignored", "engine/app/explain.py",
             '    if "isolation.level" in kafka_config:\n        return str(kafka_config["isolation.level"])\n', "",
             (f"{UNIT}::test_explain_scans_as_the_warehouse_reads_with_a_group_unless_told",),
             "the user's isolation.level no longer decides how explain scans"),
    Mutation("no-aborted-evidence", "engine/app/explain.py",
             'ev.update(aborted=iso["aborted"],', 'ev.update(aborted=[],',
             (MIXED,), "explain ignores the aborted ranges of the isolation reads"),
    Mutation("header-producers-kept", "engine/app/explain.py",
             'producers=[*iso["producers"], *(r for r in headers if int(r["partition"]) not in from_batches)])',
             "producers=headers)",
             (MIXED,), "explain keeps the producers' header claims instead of the record batches' producer ids"),
    Mutation("no-group-history", "engine/app/explain.py",
             "ev.update(rewinds=g.rewinds, rebalances=g.rebalances, history_coverage=g.history_coverage)",
             "ev.update(history_coverage=g.history_coverage)",
             (MIXED,), "explain reads the group's coverage but not its rewinds and rebalances"),
    Mutation("scenario-no-commit-after-reread", "engine/local/causes.py",
             "        wh.commit_assigned()\n", "",
             (MIXED,), "the next member commits only after the post-window events: the rebalance's range "
                       "holds events delivered once"),
    Mutation("rebalance-never-committed-crashes", "engine/core/causes.py",
             '                if u.get("from_offset") is None:\n                    continue', "",
             (f"{UNIT}::test_a_rebalance_range_the_group_never_committed_before_is_no_redelivery",),
             "a rebalance range without a previous commit crashes the attribution"),
]
