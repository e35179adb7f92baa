"""Mutations: deliberate breakages of the product, each with the tests that must catch it.

Issue 22 asks that every repaired assertion be shown to fail against a broken product. Each
``m_<area>.py`` module here lists ``MUTATIONS``; ``python -m tests.mutations.run`` applies them one
at a time to a throwaway checkout of HEAD and reports, per mutation, whether its tests failed
("killed") as they must. Nothing here is collected by pytest.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    """One breakage. ``path``: a file of the checkout; ``old``: text that occurs in it exactly once;
    ``new``: what replaces it; ``tests``: pytest node ids (or files) that must fail with it and
    pass without it; ``why``: the behaviour it flips, in one line, for the record."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str
