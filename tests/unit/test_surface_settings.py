"""The [surfaces] settings section."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from muxproxy.settings import Settings, SettingsError, load_settings, parse_settings
from muxproxy.surfaces.openai import wait_seconds
from tests.support.gateway import base_config, merge


def test_defaults_and_values(tmp_path: Path) -> None:
    settings = parse_settings(merge(base_config(tmp_path), {"jobs": {
        "deadline_seconds": 900}}), {})
    # Unset, the OpenAI surface waits for a job's whole life, deadline sweep included.
    assert settings.surfaces.openai_wait_seconds == 0.0
    assert wait_seconds(settings) > 900
    assert settings.surfaces.default_model == ""
    settings = parse_settings(merge(base_config(tmp_path), {"surfaces": {
        "openai_wait_seconds": "12", "default_model": "demo-image-async"}}), {})
    assert settings.surfaces.openai_wait_seconds == 12.0
    assert wait_seconds(settings) == 12.0
    assert settings.surfaces.default_model == "demo-image-async"


@pytest.mark.parametrize(("surfaces", "message"), [
    ({"openai_wait_seconds": -1}, "surfaces.openai_wait_seconds"),
    ({"default_model": "nope"}, "surfaces.default_model: unknown model 'nope'"),
    ({"wait": 3}, "unknown setting surfaces.wait"),
])
def test_bad_values_name_the_key(tmp_path: Path, surfaces: dict[str, object],
                                 message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_settings(merge(base_config(tmp_path), {"surfaces": surfaces}), {})


def test_the_default_wait_ends_before_the_sdks_default_timeout() -> None:
    # openai-python retries its own timeouts: a wait longer than its default would
    # send that retry while the job still runs (a second job, without a key).
    sdk_timeout = openai.DEFAULT_TIMEOUT.read
    assert sdk_timeout is not None
    shipped = load_settings(Path(__file__).parents[2] / "config.toml", {})
    for settings in (Settings(), shipped):
        assert wait_seconds(settings) < sdk_timeout
