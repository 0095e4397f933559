"""``muxproxy serve [--config PATH]`` and friends."""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
from collections.abc import Sequence

from muxproxy import cli_client, cli_generate, cli_keys, cli_storage
from muxproxy.settings import Settings, SettingsError, load_settings

# Descriptors beyond the connections: the database, image files, upstream and
# webhook connections, and the health probes served past max_connections.
_FD_HEADROOM = 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="muxproxy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=os.environ.get("MUXPROXY_CONFIG", "config.toml"),
                       help="config file (default: $MUXPROXY_CONFIG or ./config.toml)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="worker processes sharing the port (PostgreSQL only; default 1)")
    # Given by the supervisor of --workers to each worker it starts.
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", default=os.environ.get("MUXPROXY_CONFIG", "config.toml"))
    migrate = commands.add_parser(
        "migrate", help="bring the database's schema to this version and exit")
    migrate.add_argument("--config", default=os.environ.get("MUXPROXY_CONFIG", "config.toml"))
    copy = commands.add_parser(
        "copy-db", help="copy every key, job, credit and callback to another database")
    copy.add_argument("--from", dest="source", required=True, metavar="URL",
                      help="the database to copy (sqlite:///path/muxproxy.db, postgresql://...)")
    copy.add_argument("--to", dest="target", required=True, metavar="URL",
                      help="the database to fill; it must be empty (see --force)")
    copy.add_argument("--force", action="store_true",
                      help="replace what the target holds")
    cli_keys.add_parser(commands)
    cli_storage.add_parser(commands)
    cli_generate.add_parser(commands)
    mcp = commands.add_parser(
        "mcp", help="serve MCP on stdio, relaying to a running gateway's /mcp",
        description="An MCP server on stdin/stdout for agents (Claude Desktop, Cursor, "
                    "Claude Code) whose calls go to the gateway at $MUXPROXY_URL with "
                    "$MUXPROXY_API_KEY.")
    cli_client.add_gateway_options(mcp)
    args = parser.parse_args(argv)
    if args.command == "copy-db":  # two URLs and no config file
        from muxproxy.cli_copy import copy_db

        return copy_db(args.source, args.target, force=args.force)
    # Clients of a running gateway: a config file is only one place they look.
    if args.command == "generate":
        return cli_generate.run(args)
    if args.command == "mcp":
        return _mcp(args)

    # Every command loads through here: load_settings runs every check, the provider
    # kinds' and backends' own included, so serve refuses what check-config refuses,
    # before it opens or binds anything.
    try:
        settings = load_settings(args.config or os.environ.get("MUXPROXY_CONFIG", "config.toml"))
    except SettingsError as exc:
        print(f"muxproxy: {exc}", file=sys.stderr)
        return 2
    if args.command == "keys":
        return cli_keys.run(settings, args)
    if args.command == "copy-storage":
        return cli_storage.run(settings, args)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "check-config":
        print(f"{args.config}: ok ({len(settings.providers)} providers, "
              f"{len(settings.models)} models)")
        return 0
    if args.workers != 1:
        return _supervise(settings, args)
    return _serve(settings, args.host, args.port, args.listen_fd, args.lifeline_fd)


def _supervise(settings: Settings, args: argparse.Namespace) -> int:
    """``serve --workers N``: N processes on one port, on a database they can share."""
    from muxproxy.logs import configure_logging
    from muxproxy.store import store_backend
    from muxproxy.workers import supervise

    if args.workers < 1:
        print("muxproxy: --workers must be at least 1", file=sys.stderr)
        return 2
    if not store_backend(settings.database.url).shared or ":memory:" in settings.database.url:
        print(f"muxproxy: --workers {args.workers} needs a database that processes share: "
              f"{settings.database.url} is not one. Use a SQLite file or PostgreSQL.",
              file=sys.stderr)
        return 2
    writer = configure_logging(settings.logging.level, settings.logging.format)
    worker = [sys.executable, "-m", "muxproxy.cli", "serve", "--config", args.config]
    try:
        return supervise(worker, args.host or settings.server.host,
                         args.port or settings.server.port, args.workers,
                         settings.server.graceful_shutdown_seconds)
    finally:
        writer.flush()


def _mcp(args: argparse.Namespace) -> int:
    import anyio

    from muxproxy.mcp_stdio import serve

    try:
        gateway = cli_client.locate(args)
    except cli_client.NoGateway as exc:
        print(f"muxproxy mcp: {exc}", file=sys.stderr)
        return 2
    anyio.run(serve, gateway.url, gateway.api_key)
    return 0


def _migrate(settings: Settings) -> int:
    """Open the store, which migrates it (under an advisory lock on PostgreSQL, so
    replicas starting meanwhile wait), and close it. ``serve`` migrates the same way
    at start; this runs it on its own, before a rollout."""
    import asyncio

    from muxproxy.errors import StoreUnavailable
    from muxproxy.store import open_store

    async def run() -> None:
        store = open_store(settings.database.url, settings.database)
        await store.open()
        await store.aclose()

    try:
        asyncio.run(run())
    except (StoreUnavailable, RuntimeError) as exc:
        print(f"muxproxy: migrate: {exc}", file=sys.stderr)
        return 1
    print(f"database schema is current ({settings.database.url.partition(':')[0]})")
    return 0


def _serve(settings: object, host: str | None, port: int | None,
           listen_fd: int | None = None, lifeline_fd: int | None = None) -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from muxproxy.app import begin_shutdown, create_app
    from muxproxy.edge import EdgeLimits, raise_open_file_limit
    from muxproxy.logs import get_logger
    from muxproxy.server import HttpProtocol, Server
    from muxproxy.settings import Settings

    assert isinstance(settings, Settings)
    open_files = raise_open_file_limit()
    # A worker of --workers shares its database with the others.
    app = create_app(settings, shared_database=listen_fd is not None)
    edge = EdgeLimits.from_settings(settings.server)
    if open_files < edge.max_connections + _FD_HEADROOM:
        get_logger("muxproxy.server").warning(
            "open file limit below server.max_connections; raise LimitNOFILE",
            open_files=open_files, max_connections=edge.max_connections)
    config = uvicorn.Config(
        app, host=host or settings.server.host, port=port or settings.server.port,
        http=HttpProtocol.bounded(edge), log_level="warning", access_log=False,
        proxy_headers=False, timeout_keep_alive=math.ceil(edge.keepalive_timeout),
        timeout_graceful_shutdown=math.ceil(settings.server.graceful_shutdown_seconds))
    server = Server(config, on_signal=lambda: begin_shutdown(app), edge=edge,
                    lifeline_fd=lifeline_fd)
    # A worker of --workers serves the supervisor's socket (muxproxy.workers).
    server.run(sockets=None if listen_fd is None else [socket.socket(fileno=listen_fd)])
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
