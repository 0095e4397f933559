from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.gateway import RunningGateway, base_config, run_gateway


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return base_config(tmp_path)


@pytest.fixture
async def gateway(config: dict[str, Any]) -> AsyncIterator[RunningGateway]:
    async with run_gateway(config) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session, for driving adapters against their fakes."""
    async with aiohttp.ClientSession() as session:
        yield session
