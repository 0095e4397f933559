"""API key administration shared by the admin API and the CLI."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from muxproxy.store import ApiKey, KeyLimits
from muxproxy.store.accounts import LedgerEntry, UsageRow

KEY_PREFIX = "mux_"
# Bounds that keep every sum inside SQLite's 64-bit integers: a credit amount
# (initial credits, one top-up), a balance, and a per-key limit.
MAX_CREDITS = 10**15
MAX_BALANCE = 10**18
MAX_LIMIT = 10**9
# Networks one key may be granted for its callbacks.
MAX_NETWORKS = 32


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_view(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "created_at": key.created_at,
            "revoked_at": key.revoked_at, "balance": key.balance,
            "unlimited": key.limits.unlimited, "rpm": key.limits.rpm_limit,
            "max_concurrent": key.limits.max_concurrent,
            "models": list(key.limits.allowed_models)
            if key.limits.allowed_models is not None else None,
            "webhook_allow_networks": list(key.limits.webhook_allow_networks)}


def ledger_view(entry: LedgerEntry) -> dict[str, Any]:
    return {"id": entry.id, "kind": entry.kind.value, "amount": entry.amount,
            "job_id": entry.job_id, "model": entry.model, "note": entry.note,
            "created_at": entry.created_at}


def usage_view(row: UsageRow) -> dict[str, Any]:
    return {"day": row.day, "model": row.model, "jobs": row.jobs, "completed": row.completed,
            "failed": row.failed, "credits": row.credits}


class LimitError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def apply_limits(limits: KeyLimits, changes: Mapping[str, Any]) -> KeyLimits:
    """``changes`` may hold unlimited, rpm, max_concurrent, models,
    webhook_allow_networks; null clears a limit."""
    result = limits
    if "unlimited" in changes:
        if not isinstance(changes["unlimited"], bool):
            raise LimitError("'unlimited' must be true or false", "unlimited")
        result = replace(result, unlimited=changes["unlimited"])
    if "rpm" in changes:
        result = replace(result, rpm_limit=_positive_or_null(changes["rpm"], "rpm"))
    if "max_concurrent" in changes:
        result = replace(result, max_concurrent=_positive_or_null(changes["max_concurrent"],
                                                                  "max_concurrent"))
    if "models" in changes:
        models = changes["models"]
        if models is not None and (not isinstance(models, list)
                                   or not all(isinstance(m, str) and m for m in models)):
            raise LimitError("'models' must be a list of model ids, or null", "models")
        result = replace(result, allowed_models=tuple(models) if models is not None else None)
    if "webhook_allow_networks" in changes:
        result = replace(result, webhook_allow_networks=_networks(
            changes["webhook_allow_networks"]))
    return result


def _networks(value: Any) -> tuple[str, ...]:
    """CIDR strings, each normalised (``10.1.2.3/8`` is ``10.0.0.0/8``); null clears."""
    field = "webhook_allow_networks"
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_NETWORKS:
        raise LimitError(f"'{field}' must be a list of at most {MAX_NETWORKS} networks "
                         "(CIDR), or null", field)
    networks = []
    for item in value:
        try:
            if not isinstance(item, str):
                raise TypeError(item)
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except (TypeError, ValueError):
            raise LimitError(f"'{field}': {str(item)[:60]!r} is not a network (CIDR such as "
                             "'10.20.0.0/16')", field) from None
    return tuple(dict.fromkeys(networks))


def _positive_or_null(value: Any, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 1 <= value <= MAX_LIMIT):
        raise LimitError(f"'{name}' must be a whole number from 1 to {MAX_LIMIT}, or null",
                         name)
    return value
