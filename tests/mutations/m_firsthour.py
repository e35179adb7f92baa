"""Issue 21, the first hour: each new or repaired assertion against the breakage it is there for
(help markup, unknown commands, pipes, retry progress, field-level security, the demo's printed
commands, README's commands)."""

from __future__ import annotations

from tests.mutations import Mutation

_HOUR = "tests/e2e/test_first_hour.py"
_ERR = "tests/e2e/test_errors_cli.py"
_FLS = "tests/integration/test_salesforce_fls.py"
_DEMO = "tests/e2e/test_demo.py::test_demo_finds_fixes_proves_and_its_artefacts_verify"

MUTATIONS = [
    Mutation("help-pipe-rich-markup", "engine/cli/main.py",
             "            cmd.rich_markup_mode = None  # type: ignore[attr-defined]\n", "",
             (f"{_HOUR}::test_every_word_of_each_option_help_is_in_its_commands_help[pipe]",
              f"{_HOUR}::test_help_in_a_pipe_is_plain_and_one_line_per_option"),
             "help in a pipe is rich again: panels folded at 80 columns, [mapping.NAME] eaten as markup"),
    Mutation("help-terminal-unescaped", "engine/cli/main.py",
             "p.help = _escape_markup(p.help)", "p.help = p.help",
             (f"{_HOUR}::test_every_word_of_each_option_help_is_in_its_commands_help[terminal]",),
             "rich help on a terminal takes [mapping.NAME] for a style tag again"),
    Mutation("unknown-command-no-pointer", "engine/cli/main.py",
             " See `{where} --help`.\"", "\"",
             (f"{_HOUR}::test_an_unknown_command_points_to_the_help",),
             "an unknown command no longer points to the help"),
    Mutation("pipe-wraps-at-80", "engine/cli/_shared.py",
             'if not is_tty(sys.stderr if kwargs.get("stderr") else sys.stdout):', "if False:",
             (f"{_HOUR}::test_a_long_line_and_a_long_table_value_stay_whole_in_a_pipe",),
             "consoles writing to a pipe fold lines and table cells at 80 columns again"),
    Mutation("retry-silent", "engine/cli/main.py",
             "set_retry_reporter(retry_progress)", "set_retry_reporter(None)",
             (f"{_ERR}::test_service_unreachable_is_exit_5_naming_the_host_at_the_deadline",
              f"{_ERR}::test_salesforce_unreachable_is_exit_5_naming_the_host"),
             "retries are silent again until the exit-5 line"),
    Mutation("retry-no-time-left", "engine/core/notices.py",
             'f"giving up in {self.left_s:.1f} s): {self.reason}")', 'f"): {self.reason}")',
             (f"{_ERR}::test_service_unreachable_is_exit_5_naming_the_host_at_the_deadline",),
             "a retry line no longer says how long is left"),
    Mutation("retry-shows-the-password", "engine/connectors/postgres/connection.py",
             "place = where or redact_dsn(dsn)", "place = where or dsn",
             (f"{_ERR}::test_service_unreachable_is_exit_5_naming_the_host_at_the_deadline",),
             "PostgreSQL's retry lines name the server by its DSN with the password"),
    Mutation("kafka-scan-retry-silent", "engine/connectors/kafka/scan.py",
             'hint="check the bootstrap address and that the broker runs")',
             'hint="check the bootstrap address and that the broker runs", notice=lambda _line: None)',
             ("tests/integration/test_forensics.py::test_unreachable_broker_is_one_line_exit_5",),
             "kafka-audit waits for an unreachable broker without a word"),
    Mutation("fls-hint-gone", "engine/connectors/salesforce/connector.py",
             "return source.fls_hint(source.connection(self.config))", 'return ""',
             (f"{_FLS}::test_a_field_missing_from_describe_names_field_level_security_and_the_user",),
             "a field hidden from the integration user reads like a typo again"),
    Mutation("local-api-fls-describe", "engine/local/sfapi/app.py",
             'out["fields"] = [f for f in out["fields"] if f["name"].lower() not in hidden]', "pass",
             (f"{_FLS}::test_the_local_api_hides_a_field_from_a_user_as_field_level_security_does",),
             "the local API's describe shows a field hidden from the user"),
    Mutation("demo-no-activation-line", "engine/local/demo.py",
             "    if activate:\n", "    if False:\n", (_DEMO,),
             "the demo no longer says how to put recon on PATH: its verify command is 'command not found'"),
    Mutation("readme-protocol-wrong-option", "README.md",
             "--diff out/diff-after --exclude-from out/repair", "--diff out/diff-after --exclude out/repair",
             (_DEMO,),
             "a README protocol command no longer works pasted as written"),
]
