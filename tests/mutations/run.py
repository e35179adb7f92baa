"""Apply each mutation of ``tests/mutations/m_*.py`` to a throwaway checkout and run its tests.

    python -m tests.mutations.run [--only NAME_OR_MODULE ...] [--clean] [--record FILE]

A mutation is *killed* when its tests fail (pytest exit 1) with it applied. ``--clean`` first runs
each mutation's tests on the unmutated checkout, which must pass: a test that fails anyway proves
nothing. The checkout is a ``git worktree`` of HEAD (commit first), removed afterwards; the tests
run with this interpreter and the checkout first on ``PYTHONPATH``, so the mutated ``engine`` is
the one imported, also by the ``recon`` subprocesses the tests start. Exit 0 when every mutation
was killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tests.mutations as _pkg
from tests.mutations import Mutation

ROOT = Path(__file__).resolve().parents[2]


def all_mutations() -> list[tuple[str, Mutation]]:
    rows: list[tuple[str, Mutation]] = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(_pkg.__path__) if m.name.startswith("m_")):
        rows += [(mod, m) for m in importlib.import_module(f"tests.mutations.{mod}").MUTATIONS]
    return rows


def _pytest(tree: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.monotonic()
    # -m "": a mutation names its tests, slow ones included (the default addopts deselect those)
    run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "", *tests],
                         cwd=tree, env=env, capture_output=True, text=True)
    tail = (run.stdout.strip().splitlines() or [""])[-1]
    return run.returncode, time.monotonic() - t0, tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=[], help="mutation names or m_ module names")
    ap.add_argument("--clean", action="store_true", help="also run the tests unmutated (they must pass)")
    ap.add_argument("--record", type=Path, help="append the result table (markdown) to this file")
    args = ap.parse_args(argv)
    rows = [(mod, m) for mod, m in all_mutations() if not args.only or m.name in args.only or mod in args.only]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    lines = ["| mutation | flips | tests | unmutated | mutated |", "|---|---|---|---|---|"]
    survived = 0
    with tempfile.TemporaryDirectory(prefix="recon-mutate-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), "HEAD"], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for mod, m in rows:
                target = tree / m.path
                text = target.read_text()
                if text.count(m.old) != 1:
                    print(f"{m.name}: the text to mutate occurs {text.count(m.old)} times in {m.path}", file=sys.stderr)
                    survived += 1
                    lines.append(f"| {m.name} | {m.why} | {', '.join(m.tests)} | | STALE (text not found once) |")
                    continue
                clean = "not run"
                if args.clean:
                    rc, secs, tail = _pytest(tree, m.tests)
                    clean = f"pass ({secs:.0f} s)" if rc == 0 else f"FAIL rc={rc}: {tail}"
                target.write_text(text.replace(m.old, m.new))
                try:
                    rc, secs, tail = _pytest(tree, m.tests)
                finally:
                    target.write_text(text)
                killed = rc == 1
                survived += not killed or clean.startswith("FAIL")
                verdict = f"killed ({secs:.0f} s): {tail}" if killed else f"SURVIVED rc={rc}: {tail}"
                print(f"{'ok ' if killed else '!! '} {mod}.{m.name}: {verdict}", flush=True)
                lines.append(f"| {m.name} | {m.why} | {', '.join(m.tests)} | {clean} | {verdict} |")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    table = "\n".join([f"Mutations at {head}, `python -m tests.mutations.run" + (" --clean" if args.clean else "")
                       + "`:", "", *lines, ""])
    print(table)
    if args.record:
        with args.record.open("a") as f:
            f.write(table + "\n")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
