"""The `recon` command line: parse, call one function, render. No logic lives here.

Exit codes (the contract): 0 success, 1 success with findings, 2 usage/config/credential/input error,
3 circuit breaker open, 4 verification failed, 5 a service unreachable after retries,
70 an internal error (a bug: the traceback is printed so it can be reported).
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from engine.cli._shared import PIPE_WIDTH, emit_json, err, is_tty, naming_options, out, retry_progress
from engine.cli.options import ConfigOpt, JsonFlag, LedgerOpt, ManifestOpt, SigningKeyOpt
from engine.core.errors import Exit, ReconError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reconcile Salesforce with a PostgreSQL warehouse, with Kafka as the third witness.")


def _version(value: bool) -> None:
    if value:
        from engine import __version__

        out.print(f"recon {__version__}")
        raise typer.Exit(int(Exit.OK))


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """recon: diff, explain, gate, repair and prove."""


@app.command("diff")
def diff_cmd(
    source: Annotated[str | None, typer.Argument(help="salesforce:OBJECT, postgresql://…#schema.table, parquet:PATH or csv:PATH")] = None,
    target: Annotated[str | None, typer.Argument(help="Same forms as SOURCE.")] = None,
    key: Annotated[list[str] | None, typer.Option("-k", "--key", help="Key column SRC[=TGT]; repeat for compound keys.")] = None,
    column: Annotated[list[str] | None, typer.Option("-c", "--column", help="Compared column SRC[=TGT]; repeatable (default: all shared columns).")] = None,
    tolerance: Annotated[list[str] | None, typer.Option("--tolerance", help="COL=ABS absolute tolerance; repeatable.")] = None,
    source_where: Annotated[str | None, typer.Option("--source-where", help="Condition on the source (SOQL or SQL).")] = None,
    target_where: Annotated[str | None, typer.Option("--target-where", help="Condition on the target (SOQL or SQL).")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Compare as of this time (ISO-8601); later changes count as in_flight.")] = None,
    unique_key: Annotated[bool, typer.Option("--unique-key", help="Fail (exit 2) if a key is duplicated on either side.")] = False,
    segment_rows: Annotated[int | None, typer.Option(
        "--segment-rows", min=1, help="Rows per Merkle segment (default 16,384; 128 with --state).")] = None,
    config: ConfigOpt = None,
    mapping: Annotated[str | None, typer.Option("--mapping", help="A [mapping.NAME] of the config.")] = None,
    as_json: JsonFlag = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write summary.json and differences.parquet here.")] = None,
    ledger: LedgerOpt = None,
    manifest: ManifestOpt = None,
    signing_key: SigningKeyOpt = None,
    executor: Annotated[str, typer.Option("--executor", help="Where key-range tasks run: local, dask (a LocalCluster) or dask://HOST:PORT.")] = "local",
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Key-range tasks at once (default: the cores).")] = None,
    range_rows: Annotated[int | None, typer.Option("--range-rows", min=1, help="Source rows per key-range task (default: from --memory-limit).")] = None,
    memory_limit: Annotated[str | None, typer.Option("--memory-limit", help="Memory the diff may use, e.g. 3G (default: half the machine's); a larger diff runs as key ranges.")] = None,
    progress: Annotated[str | None, typer.Option("--progress", help="json: one progress object per line on stderr (key-range runs).")] = None,
    state: Annotated[Path | None, typer.Option("--state", help="Incremental: keep the state here and re-read only what changed since the last run.")] = None,
    full: Annotated[bool, typer.Option("--full", help="With --state: read both sides whole, re-cut the segments and rebuild the state.")] = False,
    verify_full: Annotated[bool, typer.Option("--verify-full", help="With --state: also read both sides whole and check the state (status state_drift when it was wrong).")] = False,
    full_every: Annotated[int | None, typer.Option("--full-every", help="With --state: every N-th run checks the state with a full read (default 24).")] = None,
) -> None:
    """Compare two datasets; exit 1 when they differ."""
    from engine import config as config_mod
    from engine.app import diff as use_case
    from engine.app.evidence import EvidenceOptions
    from engine.config import parse_pair

    tol = {}
    for t in tolerance or []:
        name, sep, val = t.partition("=")
        if not sep:
            raise _usage(f"malformed --tolerance {t!r}: use COL=ABS, e.g. --tolerance amount=0.01")
        tol[name] = _tolerance(val)
    from engine.app.scale import ScaleOptions, parse_size

    if progress not in (None, "json"):
        raise _usage(f"--progress {progress!r}: the only form is --progress json (a terminal shows a live line by itself)")
    scale = ScaleOptions(executor=executor, workers=workers, range_rows=range_rows,
                         memory_limit=parse_size(memory_limit) if memory_limit is not None else None)
    opts = use_case.DiffOptions(
        source=source, target=target, mapping=mapping, keys=tuple(parse_pair(k) for k in key or []),
        columns=tuple(parse_pair(c) for c in column or []), tolerance=tol, source_where=source_where,
        target_where=target_where, as_of=_as_of(as_of), unique_key=unique_key, segment_rows=segment_rows,
        out_dir=out_dir, evidence=EvidenceOptions(ledger, manifest, signing_key), scale=scale,
        state=state, full=full, verify_full=verify_full, full_every=full_every)
    opts.check()  # exit 2 before any extraction
    cfg = config_mod.load(config)
    live = not as_json and progress is None

    def run(say: Any) -> Any:
        return use_case.run(opts, cfg, progress=say, on_progress=_progress_sink(progress, say))

    with naming_options(columns="-k/-c or the mapping's key/columns", where="--source-where/--target-where"):
        res = _with_status(run, enabled=live)
    if as_json:
        emit_json(res.summary)
    else:
        from engine.report.terminal import render_diff

        render_diff(out, res.summary, out_dir)
    raise typer.Exit(int(res.exit_code))


def _tolerance(text: str) -> Any:
    from engine.core.tolerance import parse_tolerance

    try:
        return parse_tolerance(text)
    except ValueError as exc:
        raise _usage(f"--tolerance: {exc}") from None


def _as_of(text: str | None) -> Any:
    from engine.cli._shared import parse_time

    return parse_time(text, "--as-of")


def _progress_sink(form: str | None, say: Any) -> Any:
    """Key-range progress: one JSON object per line on stderr (``--progress json``), else the live
    status line (a terminal only: ``say`` does nothing elsewhere)."""
    if form == "json":
        import json

        def emit(p: dict[str, Any]) -> None:
            sys.stderr.write(json.dumps(p, sort_keys=True) + "\n")
            sys.stderr.flush()

        return emit

    def line(p: dict[str, Any]) -> None:
        eta = f", ETA {p['eta_s']:.0f}s" if p.get("eta_s") is not None else ""
        say(f"ranges {p['ranges_done']}/{p['ranges_total']}, {p['rows_per_s']:,} rows/s{eta}")

    return line


def _with_status(work: Any, *, enabled: bool) -> Any:
    """Run ``work(say)`` under a live status line on stderr (a terminal only), showing each phase
    and the time spent so far; schedulers and pipes get no control characters."""
    if not enabled or not sys.stderr.isatty():
        return work(lambda _msg: None)
    import time

    t0 = time.perf_counter()
    with err.status("starting…", spinner="dots") as status:
        def say(msg: str) -> None:
            status.update(f"{msg} ({time.perf_counter() - t0:.1f}s)")

        return work(say)


@app.command("snapshot")
def snapshot_cmd(
    source: Annotated[str, typer.Argument(help="salesforce:OBJECT, postgresql://…#schema.table, parquet:PATH or csv:PATH")],
    out_path: Annotated[Path, typer.Option("--out", help="Parquet file to write (a PATH.json sidecar goes next to it).")],
    key: Annotated[list[str], typer.Option("-k", "--key", help="Key column(s): the Merkle segments are key ranges.")],
    column: Annotated[list[str] | None, typer.Option("-c", "--column", help="Columns to keep (default all).")] = None,
    where: Annotated[str | None, typer.Option("--where", help="Condition (SOQL or SQL).")] = None,
    config: ConfigOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a Parquet snapshot of one side plus its sidecar (schema, rows, Merkle root, extraction facts)."""
    from engine import config as config_mod
    from engine.app import reconcile

    with naming_options(columns="-k/-c", where="--where"):
        res = reconcile.snapshot(source, out_path, config_mod.load(config), keys=key, columns=column, where=where)
    if as_json:
        emit_json(res)
    else:
        out.print(f"{res['rows']:,} rows → {res['parquet']} (sidecar {res['sidecar']}, Merkle root {res['merkle_root'][:16]}…)")


#: Entry-point group through which installed extras add commands (``recon[local]``'s
#: ``services``, ``scenario`` and ``demo``): the CLI knows no plugin by name.
PLUGIN_GROUP = "recon.commands"


def _register_command_modules() -> None:
    from importlib.metadata import entry_points

    from engine.cli.commands import register_all

    register_all(app)
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        ep.load()(app)


_register_command_modules()


def _usage(msg: str) -> ReconError:
    from engine.core.errors import UsageError

    return UsageError(msg)


def _say_error(line: str) -> None:
    """One unwrapped line on stderr: schedulers grep it, terminals show it whole."""
    sys.stderr.write(" ".join(line.split()) + "\n")
    sys.stderr.flush()


def _is_cli_usage_error(exc: BaseException) -> bool:
    """Typer (which vendors click) or click itself rejected the command line."""
    classes: list[type] = []
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        classes.append(TyperClickException)
    except ImportError:  # older typer on plain click
        pass
    try:
        import click

        classes.append(click.exceptions.ClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(classes))


def _fast_exit(code: int) -> NoReturn:
    """Leave without tearing the interpreter down once a command has finished: freeing gigabytes
    of frames object by object and joining idle worker pools took 0.1–0.2 s after the answer was
    already out (a third of a million-row diff's overhead). Every file recon writes is closed by
    then; the standard streams are flushed here."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said anyway
            pass
    os._exit(code)


#: rich help markup: ``[name]`` with a leading letter, ``#``, ``/`` or ``@`` is a style tag
#: (rich.markup.escape's pattern, kept here so a start does not import rich)
_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def _escape_markup(text: str) -> str:
    return _MARKUP_TAG.sub(lambda m: f"{m.group(1)}{m.group(1)}\\{m.group(2)}", text)


def command(*, tty: bool) -> Any:
    """The click command tree of ``app``, its help laid out for where it goes.

    A terminal gets rich's help panels, with every help text's brackets escaped: rich took
    ``[mapping.NAME]`` for a style tag and printed "A  of the config". A pipe or a file gets
    click's plain help, unwrapped (a log keeps each option on one line) and with no markup at all."""
    import typer.main

    root = typer.main.get_command(app)
    if not tty:
        root.context_settings = {**root.context_settings, "terminal_width": PIPE_WIDTH,
                                 "max_content_width": PIPE_WIDTH}
    todo = [root]
    while todo:
        cmd = todo.pop()
        todo.extend(getattr(cmd, "commands", {}).values())
        if not tty:
            cmd.rich_markup_mode = None  # type: ignore[attr-defined]
            continue
        if cmd.help:
            cmd.help = _escape_markup(cmd.help)
        for p in cmd.params:
            if getattr(p, "help", None):
                p.help = _escape_markup(p.help)  # type: ignore[attr-defined]
    return root


def _usage_line(exc: Any) -> str:
    """Click's one-line complaint, pointing to the help of the command it was about."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "recon"
    msg = exc.format_message().rstrip()
    return f"recon: error: {msg}{'' if msg.endswith(('.', '?', '!')) else '.'} See `{where} --help`."


def main() -> None:
    """Console entry point: map recon's errors to one line and an exit code, never a traceback."""
    from engine.core.notices import set_retry_reporter
    from engine.runtime import tune_process

    tune_process()
    set_retry_reporter(retry_progress)
    try:
        # click returns typer.Exit's code instead of raising it here
        rc = command(tty=is_tty(sys.stdout))(prog_name="recon", standalone_mode=False)
        _fast_exit(rc if isinstance(rc, int) else 0)
    except ReconError as exc:
        _say_error(f"recon: error: {exc}")
        sys.exit(int(exc.exit_code))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _say_error("recon: interrupted")
        sys.exit(int(Exit.INTERRUPTED))
    except Exception as exc:
        if _is_cli_usage_error(exc):
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.exit(int(Exit.USAGE))
            _say_error(_usage_line(exc))
            sys.exit(int(Exit.USAGE))
        if os.environ.get("RECON_DEBUG") != "0":
            traceback.print_exc()
        _say_error(f"recon: internal error: {type(exc).__name__}: {exc} (a bug; please report it)")
        sys.exit(int(Exit.INTERNAL))


if __name__ == "__main__":
    main()
