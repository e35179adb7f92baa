"""The shell commands of README's "Two commands" and "From the demo to your own org" sections, and
which of them a test can run on the embedded stack alone (issue 21: a newcomer pastes them).

Not collected by pytest (no ``test_`` prefix): tests/e2e/test_demo.py runs them against the demo's
own stack and state directory, after the demo, so the demo runs once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS = ("## Two commands", "## From the demo to your own org")
#: the words that start a command in a fenced block or an inline code span
_STARTS = ("recon ", "./scripts/", "source ", "export PATH", "pipx ", "uv ", "pip ")
_INLINE = re.compile(r"`((?:" + "|".join(re.escape(s) for s in _STARTS) + r")[^`]*)`")
_EXIT = re.compile(r"#\s*exit (\d+)")


@dataclass(frozen=True)
class Command:
    line: str  # as written, without its comment
    exit_code: int | None  # from a trailing "# exit N" comment
    kind: str  # "run", or why not: "suite", "demo", "install", "activation", "your systems"


def section(title: str, text: str | None = None) -> str:
    text = README.read_text() if text is None else text
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:] if end < 0 else text[start:end]


def _kind(line: str, inline: bool = False) -> str:
    if line.startswith(("./scripts/test", "./scripts/bench")):
        return "suite"  # never from inside the suite (nor its benchmarks)
    if line.startswith("./scripts/demo"):
        return "demo"  # `recon demo`, which the calling test ran
    if line.startswith(("pipx ", "uv ", "pip ")):
        return "install"
    if line.startswith(("source ", "export PATH")):
        return "activation"
    if inline and len(line.split()) <= 3 and "-" not in line:
        return "mention"  # a command named in prose ("`recon ledger init` installs it"), not given to run
    # a warehouse, a broker, a data directory or a placeholder of the reader's own
    if re.search(r"@warehouse|broker1|/data/|\b[A-Z][A-Z_]{2,}\b", line):
        return "your systems"
    return "run"


_BLOCK_OR_SPAN = re.compile(r"```(\w*)\n(.*?)```|" + _INLINE.pattern, flags=re.S)


def commands(text: str | None = None) -> list[Command]:
    """Every command of the two sections in the order a reader meets them: fenced ``bash`` blocks
    line by line (a line that does not start a command continues a compound one, e.g. the
    scheduler's ``case $? in …``, whose lines are then not run alone) and inline code spans that
    start with a command word."""
    out: list[Command] = []
    for title in SECTIONS:
        for m in _BLOCK_OR_SPAN.finditer(section(title, text)):
            lang, block, span = m.group(1), m.group(2), m.group(3)
            if span is not None:
                out.append(Command(span, None, _kind(span, inline=True)))
                continue
            if lang != "bash":
                continue
            mine: list[Command] = []
            compound = False
            for raw in block.splitlines():
                if not raw.strip():
                    continue
                if not raw.startswith(_STARTS):
                    compound = True
                    continue
                code = _EXIT.search(raw)
                line = raw.split("  #")[0].split(" # ")[0].strip()
                mine.append(Command(line, int(code.group(1)) if code else None, _kind(line)))
            if compound:
                mine = [Command(c.line, c.exit_code, "your systems" if c.kind == "run" else c.kind) for c in mine]
            out += mine
    return out
