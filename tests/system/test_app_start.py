"""A start that fails part-way closes everything it had opened, in reverse order."""

from __future__ import annotations

import gc
import sqlite3
import warnings
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from muxproxy.app import create_app
from muxproxy.settings import ProviderSettings, Settings, SettingsError, parse_settings
from tests.support.gateway import base_config


def settings_in(tmp_path: Path) -> Settings:
    return parse_settings(base_config(tmp_path), {})


async def start_fails(settings: Settings, error: type[Exception], match: str) -> None:
    app = create_app(settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(error, match=match):
            async with app.router.lifespan_context(app):
                pytest.fail("the gateway started")
        del app
        # An aiohttp session (or connector) dropped open says so when collected.
        gc.collect()
    assert [str(w.message) for w in caught] == []


def wal(tmp_path: Path) -> Path:
    return tmp_path / "muxproxy.db-wal"


def assert_store_closed(tmp_path: Path) -> None:
    """SQLite removes the write-ahead log when the last connection to it closes."""
    assert not wal(tmp_path).exists()
    with closing(sqlite3.connect(tmp_path / "muxproxy.db")) as conn:  # keys written first
        names = sorted(row[0] for row in conn.execute("SELECT name FROM api_keys"))
    assert names == ["alpha", "bravo"]


async def test_a_provider_that_cannot_be_built_closes_store_and_sessions(
        tmp_path: Path) -> None:
    # Built by hand, as a caller of create_app may: load_settings would refuse it.
    settings = settings_in(tmp_path)
    broken = ProviderSettings(name="broken", kind="task", api_key="k")
    settings = replace(settings, providers={**settings.providers, "broken": broken})
    await start_fails(settings, SettingsError, r"providers\.broken\.base_url: required")
    assert_store_closed(tmp_path)


async def test_storage_that_cannot_open_closes_the_store(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    settings = settings_in(tmp_path)
    settings = replace(settings, storage=replace(
        settings.storage, url=f"file://{tmp_path}/a-file/images"))
    await start_fails(settings, OSError, "a-file")
    assert_store_closed(tmp_path)


async def test_a_started_gateway_closes_everything_at_stop(tmp_path: Path) -> None:
    app = create_app(settings_in(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with app.router.lifespan_context(app):
            assert wal(tmp_path).exists()  # the store is open
            http = app.state.mux.http
        assert http.closed
        del app
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert_store_closed(tmp_path)
