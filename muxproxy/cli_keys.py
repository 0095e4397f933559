"""``muxproxy keys create|list|topup|revoke|usage|ledger``: key administration on the
configured database directly (the gateway may be running or not)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from muxproxy.auth import hash_key
from muxproxy.clock import SystemClock, now_ms
from muxproxy.keys import LimitError, apply_limits, key_view, ledger_view, new_secret, usage_view
from muxproxy.settings import Settings
from muxproxy.store import KeyExists, KeyLimits, KeyNotFound, Store, open_store

DAY_MS = 86_400_000


def add_parser(commands: Any) -> None:
    keys = commands.add_parser("keys", help="manage API keys and credits")
    keys.add_argument("--config", help="config file (default: $MUXPROXY_CONFIG or ./config.toml)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("name")
    create.add_argument("--credits", type=int, default=0)
    create.add_argument("--unlimited", action="store_true")
    create.add_argument("--rpm", type=int)
    create.add_argument("--max-concurrent", type=int)
    create.add_argument("--models", help="comma-separated model ids this key may use")
    actions.add_parser("list", help="list keys with balances and limits")
    topup = actions.add_parser("topup", help="add (or with a negative amount, remove) credits")
    topup.add_argument("key", help="key id or name")
    topup.add_argument("amount", type=int)
    topup.add_argument("--note")
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key")
    usage = actions.add_parser("usage", help="jobs and credits per model per day")
    usage.add_argument("key")
    usage.add_argument("--days", type=int, default=30)
    ledger = actions.add_parser("ledger", help="a key's ledger, newest first")
    ledger.add_argument("key")
    ledger.add_argument("--limit", type=int, default=50)


def run(settings: Settings, args: argparse.Namespace) -> int:
    action: Callable[[Store, argparse.Namespace], Awaitable[Any]] = ACTIONS[args.action]
    try:
        result = asyncio.run(_with_store(settings, action, args))
    except KeyNotFound:
        print(f"muxproxy: no key {args.key!r}", file=sys.stderr)
        return 1
    except KeyExists:
        print(f"muxproxy: a key named {args.name!r} exists", file=sys.stderr)
        return 1
    except LimitError as exc:
        print(f"muxproxy: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


async def _with_store(settings: Settings, action: Callable[[Store, argparse.Namespace],
                                                           Awaitable[Any]],
                      args: argparse.Namespace) -> Any:
    store = open_store(settings.database.url)
    await store.open()
    try:
        return await action(store, args)
    finally:
        await store.aclose()


def _now() -> int:
    return now_ms(SystemClock())


async def _create(store: Store, args: argparse.Namespace) -> Any:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    limits = apply_limits(KeyLimits(), {"unlimited": args.unlimited, "rpm": args.rpm,
                                        "max_concurrent": args.max_concurrent,
                                        "models": models})
    if args.credits < 0:
        raise LimitError("--credits must be >= 0", "credits")
    secret = new_secret()
    key = await store.create_key(args.name, hash_key(secret), now=_now(), limits=limits,
                                 credits=args.credits)
    return {"key": key_view(key), "secret": secret}


async def _list(store: Store, args: argparse.Namespace) -> Any:
    return {"keys": [key_view(k) for k in await store.list_keys()]}


async def _found(store: Store, name: str) -> str:
    key = await store.get_key(name)
    if key is None:
        raise KeyNotFound(name)
    return key.id


async def _topup(store: Store, args: argparse.Namespace) -> Any:
    return key_view(await store.topup(await _found(store, args.key), args.amount, now=_now(),
                                      note=args.note))


async def _revoke(store: Store, args: argparse.Namespace) -> Any:
    return key_view(await store.revoke_key(await _found(store, args.key), now=_now()))


async def _usage(store: Store, args: argparse.Namespace) -> Any:
    key_id = await _found(store, args.key)
    rows = await store.usage(key_id, since=_now() - args.days * DAY_MS)
    return {"key": args.key, "days": args.days, "usage": [usage_view(r) for r in rows]}


async def _ledger(store: Store, args: argparse.Namespace) -> Any:
    key_id = await _found(store, args.key)
    entries = await store.ledger(key_id, limit=args.limit)
    return {"key": args.key, "balance_from_ledger": await store.ledger_sum(key_id),
            "entries": [ledger_view(e) for e in entries]}


ACTIONS: dict[str, Callable[[Store, argparse.Namespace], Awaitable[Any]]] = {
    "create": _create, "list": _list, "topup": _topup, "revoke": _revoke, "usage": _usage,
    "ledger": _ledger,
}
