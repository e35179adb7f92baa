"""``--json`` output: the fast path (the C encoder, then msgspec's formatter) prints exactly what
``json.dumps(indent=2, sort_keys=True, default=str)`` did, so no reader of recon's JSON sees a change."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli._shared import emit_json

_LEAF = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
         | st.decimals(allow_nan=False, allow_infinity=False) | st.datetimes(timezones=st.just(UTC)))
_DOC = st.recursive(_LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                    max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(_DOC)
def test_emit_json_prints_what_the_indenting_encoder_printed(doc: Any) -> None:
    with pytest.MonkeyPatch.context() as mp:
        import io
        import sys

        out = io.StringIO()
        mp.setattr(sys, "stdout", out)
        emit_json(doc)
    assert out.getvalue() == json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"


def test_a_document_with_nan_or_infinity_is_still_printed(capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"ratio": float("inf"), "x": [float("nan")], "d": Decimal("1.10"), "t": datetime(2026, 12, 5, tzinfo=UTC)}
    emit_json(doc)
    assert capsys.readouterr().out == json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
