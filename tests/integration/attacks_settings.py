"""Size settings added in issue 22 (Salesforce Id-range chunking): a value from the environment or
from recon.toml is input too. Out of range, not a whole number, or a TOML float is exit 2 naming
where it came from, before any result is written (never clamped, never truncated)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.attacks import Attack, Run
from tests.stack_fixtures import Stack


def _float_config(stack: Stack, tmp: Path) -> dict:
    text = stack.config.read_text().replace("[salesforce]\n", "[salesforce]\nchunk_rows = 2.5e5\n", 1)
    assert "chunk_rows = 2.5e5" in text, "the scenario config has a [salesforce] table"
    cfg = tmp / "recon.toml"
    cfg.write_text(text)
    return {"cfg": str(cfg)}


def _refused(origin: str) -> object:
    def after(stack: Stack, tmp: Path, ctx: dict, run: Run) -> None:
        assert origin in run.stderr and "must be a whole number from 1 to 1,000,000,000" in run.stderr, run.stderr
        assert run.stdout == ""
        assert not (tmp / "out" / "summary.json").exists()  # nothing a scheduler could take for a diff
    return after


ATTACKS = [
    Attack("22.1", "chunk-rows-negative-in-the-environment",
           "RECON_SF_CHUNK_ROWS=-1 for a Salesforce-side diff",
           lambda stack, tmp, ctx: ["diff", "-C", str(stack.config), "--mapping", "clv", "--json",
                                    "--out", str(tmp / "out")], 2,
           _refused("RECON_SF_CHUNK_ROWS = '-1'"), env={"RECON_SF_CHUNK_ROWS": "-1"}),
    Attack("22.1", "chunk-rows-a-toml-float",
           "[salesforce] chunk_rows = 2.5e5 in recon.toml (a float, which int() would have truncated)",
           lambda stack, tmp, ctx: ["diff", "-C", ctx["cfg"], "--mapping", "clv", "--json", "--out", str(tmp / "out")],
           2, _refused("[salesforce] chunk_rows = 250000.0"), setup=_float_config),
]
