"""``muxproxy keys create|list|show|topup|deduct|limits|revoke|usage|ledger``: key
administration on the configured database directly (the gateway may be running or
not), through the same :class:`~muxproxy.keyadmin.KeyAdmin` as the admin API.

A KEY argument is a key id (``key_...``) or a name: names may not take the id's form.
Errors are the admin API's messages, on stderr; exit status 2 for bad input, 1 for
a key that is missing or a name that is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from muxproxy import keys
from muxproxy.clock import SystemClock
from muxproxy.errors import InvalidRequest, MuxError
from muxproxy.keyadmin import KeyAdmin, key_view
from muxproxy.settings import Settings
from muxproxy.store import open_store

Action = Callable[[KeyAdmin, argparse.Namespace], Awaitable[Any]]
_INTEGER = re.compile(r"-?[0-9]{1,40}")


def number(text: str) -> Any:
    """A whole number as the admin API's JSON would carry it; any other text is
    passed on as it is, for the key rules to refuse with their own message."""
    return int(text) if _INTEGER.fullmatch(text) else text


def _limit_value(kind: str, text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None  # clears the limit, like JSON null
    if kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    return number(text)


def _limit_options(parser: argparse.ArgumentParser) -> None:
    for field in keys.LIMIT_FIELDS:
        option = "--" + field.name.replace("_", "-")
        if field.kind == "flag":
            parser.add_argument(option, dest=field.name, help=field.help,
                                action=argparse.BooleanOptionalAction)
        else:
            hint = "comma-separated; " if field.kind == "list" else ""
            parser.add_argument(option, dest=field.name, metavar="VALUE",
                                help=f"{field.help} ({hint}'none' clears it)")


def _limit_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The limit options given, as the admin API's JSON fields."""
    changes = {}
    for field in keys.LIMIT_FIELDS:
        value = getattr(args, field.name)
        if value is not None:
            changes[field.name] = value if field.kind == "flag" \
                else _limit_value(field.kind, value)
    return changes


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("keys", help="manage API keys and credits")
    parser.add_argument("--config",
                        help="config file (default: $MUXPROXY_CONFIG or ./config.toml)")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("name")
    create.add_argument("--credits", type=number, default=0)
    _limit_options(create)
    listing = actions.add_parser("list", help="list keys with balances and limits")
    listing.add_argument("--name", help="only the key with this name")
    show = actions.add_parser("show", help="one key")
    show.add_argument("key", help="key id or name")
    for name, verb in (("topup", "add"), ("deduct", "take back")):
        credit = actions.add_parser(name, help=f"{verb} credits (a positive amount)")
        credit.add_argument("key", help="key id or name")
        credit.add_argument("amount", type=number)
        credit.add_argument("--note")
    limits = actions.add_parser("limits", help="change a key's limits")
    limits.add_argument("key", help="key id or name")
    _limit_options(limits)
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key", help="key id or name")
    usage = actions.add_parser("usage", help="jobs and credits per model per day")
    usage.add_argument("key", help="key id or name")
    usage.add_argument("--days", type=number, default=30)
    ledger = actions.add_parser("ledger", help="a key's ledger, newest first")
    ledger.add_argument("key", help="key id or name")
    ledger.add_argument("--limit", type=number, default=50)


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_with_admin(settings, ACTIONS[args.action], args))
    except MuxError as exc:
        print(f"muxproxy: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidRequest) else 1
    print(json.dumps(result, indent=2))
    return 0


async def _with_admin(settings: Settings, action: Action, args: argparse.Namespace) -> Any:
    store = open_store(settings.database.url, settings.database)
    await store.open()
    try:
        return await action(KeyAdmin(store, SystemClock()), args)
    finally:
        await store.aclose()


async def _create(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    key, secret = await admin.create({"name": args.name, "credits": args.credits,
                                      **_limit_changes(args)})
    return {"key": key_view(key), "secret": secret}


async def _list(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    return {"keys": [key_view(k) for k in await admin.list_keys(args.name)]}


async def _show(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    return key_view(await admin.find(args.key))


def _credit_fields(args: argparse.Namespace) -> dict[str, Any]:
    if args.note is None:
        return {"amount": args.amount}
    return {"amount": args.amount, "note": args.note}


async def _topup(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    return key_view(await admin.topup(await admin.find(args.key), _credit_fields(args)))


async def _deduct(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    return key_view(await admin.deduct(await admin.find(args.key), _credit_fields(args)))


async def _limits(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    return key_view(await admin.set_limits(await admin.find(args.key), _limit_changes(args)))


async def _revoke(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    return key_view(await admin.revoke(await admin.find(args.key)))


async def _usage(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    return await admin.usage(await admin.find(args.key), days=args.days)


async def _ledger(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    result = await admin.ledger(await admin.find(args.key), limit=args.limit)
    # The CLI's earlier name for ledger_sum, kept for scripts that read it.
    return {**result, "balance_from_ledger": result["ledger_sum"]}


ACTIONS: dict[str, Action] = {
    "create": _create, "list": _list, "show": _show, "topup": _topup, "deduct": _deduct,
    "limits": _limits,
    "revoke": _revoke, "usage": _usage, "ledger": _ledger,
}
