"""The version is written once, in muxproxy/__init__.py, and read everywhere else."""

from __future__ import annotations

import importlib.metadata

from muxproxy import __version__, references
from muxproxy.webhooks import sender
from tests.support.gateway import RunningGateway


async def test_one_version_for_the_package_the_document_and_the_user_agents(
        gateway: RunningGateway) -> None:
    assert importlib.metadata.version("muxproxy") == __version__
    async with gateway.http.get(gateway.url + "/openapi.json") as resp:
        assert resp.status == 200
        document = await resp.json()
    assert document["info"]["version"] == __version__
    assert gateway.state.http.headers["User-Agent"] == f"muxproxy/{__version__}"
    assert references.USER_AGENT.split("/") == ["muxproxy-references", __version__]
    assert sender.USER_AGENT.split("/") == ["muxproxy-webhooks", __version__]
