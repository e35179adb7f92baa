"""The Salesforce extraction sizes (`[salesforce] rest_max_rows`, `chunk_rows`, `id_chunk`): the
environment wins over the config, the defaults hold without either, and a value that is no whole
number in range is exit 2 naming where it came from (never clamped, never a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Config, load
from engine.connectors.salesforce import source as sf_source
from engine.core.errors import Exit, UsageError


def _cfg(tmp_path: Path, text: str) -> Config:
    p = tmp_path / "recon.toml"
    p.write_text("[salesforce]\n" + text)
    return load(p)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RECON_SF_CHUNK_ROWS", "RECON_SF_REST_MAX_ROWS", "RECON_SF_ID_CHUNK"):
        monkeypatch.delenv(k, raising=False)


def test_defaults_config_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (sf_source.rest_max_rows(load(None)), sf_source.chunk_rows(load(None)), sf_source.id_chunk(load(None))) \
        == (5000, 250_000, 500)
    cfg = _cfg(tmp_path, "rest_max_rows = 0\nchunk_rows = 40\nid_chunk = 7\n")
    assert (sf_source.rest_max_rows(cfg), sf_source.chunk_rows(cfg), sf_source.id_chunk(cfg)) == (0, 40, 7)
    monkeypatch.setenv("RECON_SF_CHUNK_ROWS", "12")
    monkeypatch.setenv("RECON_SF_ID_CHUNK", " 3 ")
    assert (sf_source.chunk_rows(cfg), sf_source.id_chunk(cfg)) == (12, 3)


@pytest.mark.parametrize("text,where", [
    ("chunk_rows = 0\n", "[salesforce] chunk_rows = 0"),
    ("chunk_rows = \"many\"\n", "[salesforce] chunk_rows = 'many'"),
    ("chunk_rows = 2.5\n", "[salesforce] chunk_rows = 2.5"),
    ("chunk_rows = true\n", "[salesforce] chunk_rows = True"),
    ("id_chunk = 2001\n", "[salesforce] id_chunk = 2001"),
    ("rest_max_rows = -1\n", "[salesforce] rest_max_rows = -1"),
])
def test_a_bad_size_in_the_config_is_exit_2(tmp_path: Path, text: str, where: str) -> None:
    cfg = _cfg(tmp_path, text)
    key = text.split(" ", 1)[0]
    with pytest.raises(UsageError) as err:
        getattr(sf_source, key)(cfg)
    assert err.value.exit_code == Exit.USAGE
    assert str(err.value).startswith(f"{cfg.where}: {where} must be a whole number from ")


def test_a_bad_size_in_the_environment_is_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECON_SF_ID_CHUNK", "0")
    with pytest.raises(UsageError, match=r"^RECON_SF_ID_CHUNK = '0' must be a whole number from 1 to 2,000"):
        sf_source.id_chunk(load(None))
