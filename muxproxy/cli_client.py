"""Where the client commands (``muxproxy generate``, ``muxproxy mcp``) find a running
gateway: the URL and key from their flags, then from ``MUXPROXY_URL`` and
``MUXPROXY_API_KEY``, then from the local config file (its ``server.public_url`` and
its first key), each found separately."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class NoGateway(Exception):
    """Neither flags, environment nor a config file name a gateway URL or key."""


@dataclass(frozen=True)
class GatewayAddress:
    url: str
    api_key: str


def add_gateway_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("gateway (flags, then $MUXPROXY_URL and "
                                      "$MUXPROXY_API_KEY, then the local config)")
    where.add_argument("--url", help="the gateway's address, e.g. http://127.0.0.1:8080")
    where.add_argument("--api-key", help="an API key of the gateway")
    where.add_argument("--config", default=None,
                       help="config file to take the address and first key from "
                            "(default: $MUXPROXY_CONFIG or ./config.toml)")


def locate(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> GatewayAddress:
    url = args.url or environ.get("MUXPROXY_URL") or None
    key = args.api_key or environ.get("MUXPROXY_API_KEY") or None
    if url is None or key is None:
        config_url, config_key = _from_config(args.config or environ.get("MUXPROXY_CONFIG")
                                              or "config.toml", environ)
        url = url or config_url
        key = key or config_key
    if not url:
        raise NoGateway("no gateway address: pass --url, set MUXPROXY_URL, or run where "
                        "the gateway's config.toml is")
    if not key:
        raise NoGateway("no API key: pass --api-key, set MUXPROXY_API_KEY, or run where "
                        "the gateway's config.toml (with a key) is")
    if not url.startswith(("http://", "https://")):
        raise NoGateway(f"the gateway address must start with http:// or https://, got {url!r}")
    return GatewayAddress(url.rstrip("/"), key)


def _from_config(path: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The config's public URL and first key; (None, None) without a readable config."""
    if not Path(path).is_file():
        return None, None
    from muxproxy.settings import SettingsError, load_settings

    try:
        settings = load_settings(path, environ)
    except SettingsError:
        return None, None
    key = settings.keys[0].key if settings.keys else None
    return settings.server.public_url, key
