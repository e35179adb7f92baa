"""Issue 22, "Timing and hidden windows" and "Paths that never run" item 3: each assertion that
replaced a wall-clock check or a timed window, and the new repair conflict and verification tests,
fail against the breakage they are about."""

from __future__ import annotations

from tests.mutations import Mutation

_GATE_REPAIR = "tests/integration/test_gate_repair.py"
#: the worker's abort checks (before and after materialising), both gone
_ABORT_OLD = (
    '        with self.lock:\n'
    '            if job.state == "Aborted":\n'
    '                return\n'
    '        try:\n'
    '            n = self.db.materialize_csv(job.id, job.query, include_deleted=job.operation == "queryAll",\n'
    '                                        null_as_quoted=self.csv_null_quoted)\n'
    '        except Exception as exc:  # the job fails, the server carries on\n'
    '            log.exception("bulk job %s failed", job.id)\n'
    '            with self.lock:\n'
    '                job.state, job.error, job.modstamp = "Failed", f"{type(exc).__name__}: {exc}"[:500], now_ms()\n'
    '            return\n'
    '        with self.lock:\n'
    '            job.processing_ms = int((time.monotonic() - t0) * 1000)\n'
    '            job.modstamp = now_ms()\n'
    '            aborted = job.state == "Aborted"\n'
)
_ABORT_NEW = (_ABORT_OLD
              .replace('        with self.lock:\n            if job.state == "Aborted":\n                return\n', "", 1)
              .replace('aborted = job.state == "Aborted"\n', "aborted = False\n"))
_KILLED = f"{_GATE_REPAIR}::test_killed_repair_resumes_to_the_state_of_an_uninterrupted_one"

MUTATIONS = [
    # -- wall-clock asserts replaced by the mechanism -------------------------------------------------
    Mutation("retry-gives-up-after-one-attempt", "engine/connectors/retry.py",
             "            return elapsed() >= self.deadline_s\n", "            return True\n",
             ("tests/integration/test_consumer.py::test_database_unreachable_past_the_deadline_exits_5",),
             "an outage is no longer retried until the deadline: one attempt, then exit 5"),
    Mutation("kafka-refused-login-waited-out", "engine/connectors/kafka/errors.py",
             "    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):\n",
             "    if False:\n",
             ("tests/integration/test_forensics.py::test_sasl_login_reads_and_wrong_credentials_are_one_line_exit_2",),
             "a refused SASL login is taken for a silent broker (waited out, exit 5) instead of exit 2 at once"),
    Mutation("broker-restarted-instead-of-reused", "engine/local/kafka.py",
             "            if running is not None:\n",
             "            if running is not None:\n                self._stop_locked(timeout=30)\n            if False:\n",
             ("tests/integration/test_kafka_brokers.py::test_start_twice_reuses_the_running_broker[apache]",),
             "a second start() stops the running broker and launches a new one"),
    # -- hidden windows replaced by conditions ---------------------------------------------------------
    Mutation("sf-job-hold-ignored", "engine/local/sfapi/app.py",
             "        if not self.jobs_released.is_set():", "        if False:",
             ("tests/integration/test_salesforce_api.py::test_bulk_job_states_abort_and_null_style",),
             "the control API's hold does not hold: jobs complete at once"),
    Mutation("sf-abort-overwritten", "engine/local/sfapi/app.py",
             _ABORT_OLD, _ABORT_NEW,
             ("tests/integration/test_salesforce_api.py::test_bulk_job_states_abort_and_null_style",),
             "a job aborted while InProgress is run to JobComplete by its worker once released"),
    Mutation("drain-limit-ignored", "engine/connectors/postgres/copy_stream.py",
             "while self._held >= DRAIN_LIMIT and not self.closed:", "while False:",
             ("tests/integration/test_postgres_source.py::"
              "test_a_copy_child_drain_holds_a_bounded_amount_while_nobody_reads",),
             "no back-pressure: the drain buffers the child's whole output"),
    # -- repair: crash, conflicts, verification ------------------------------------------------------
    Mutation("repair-ledger-backfill-skipped", "engine/app/repair.py",
             "n = _ledger_backfill(conn_ledger, plan, applied)", "n = 0",
             (_KILLED,),
             "a correction committed before a crash but not in the ledger is never recorded"),
    Mutation("repair-chunk-not-atomic", "engine/store/versions.py",
             '    with conn.transaction():\n        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))"',
             '    if True:\n        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))"',
             (_KILLED,),
             "a chunk's statements commit one by one: a reader sampling the copy while the repair runs sees part "
             "of a chunk, and a kill inside a chunk leaves part of it"),
    Mutation("repair-conflict-check-skipped", "engine/store/versions.py",
             '    if _same(current, c.old_value):\n        return "pending"\n    return "conflict"\n',
             '    return "pending"\n',
             (f"{_GATE_REPAIR}::test_values_changed_since_the_explain_are_conflicts_left_as_they_are",),
             "a warehouse value changed since the explain is overwritten instead of reported as a conflict"),
    Mutation("repair-verification-skipped", "engine/app/repair.py",
             "                _verify(conn, plan, group, phase)\n", "                pass\n",
             (f"{_GATE_REPAIR}::test_a_value_the_warehouse_does_not_keep_fails_verification_with_exit_4",),
             "corrections are not re-read from the warehouse and compared with Salesforce's values"),
]
