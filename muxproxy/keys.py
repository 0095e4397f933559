"""What an API key's name, credits and limits may be: one set of rules for the admin
API, the ``muxproxy keys`` CLI and the config file's ``[[keys]]``.

Each check takes a value as JSON gives it (the CLI passes text it could not read
as a number through unchanged) and raises :class:`InvalidRequest` naming the
field, so every entry point refuses the same input with the same message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from muxproxy.errors import InvalidRequest

# A key's id is this prefix and 16 hex digits. Names may not begin with it, so an
# id and a name can never be mistaken for one another.
KEY_ID_PREFIX = "key_"
MAX_NAME_CHARS = 100
MAX_NOTE_CHARS = 500
# Bounds that keep every sum inside SQLite's 64-bit integers: a credit amount
# (initial credits, one top-up), a balance, and a per-key limit.
MAX_CREDITS = 10**15
MAX_BALANCE = 10**18
MAX_LIMIT = 10**9
# Networks one key may be granted for its callbacks.
MAX_NETWORKS = 32


def is_key_id(text: str) -> bool:
    return text.startswith(KEY_ID_PREFIX)


def whole(value: Any, name: str, low: int, high: int) -> int:
    """An integer (not a bool, not a float such as 1e309) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a whole number from {low} to {high}",
                             param=name)
    return value


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise InvalidRequest(f"'name' is required (1-{MAX_NAME_CHARS} characters)",
                             param="name")
    if is_key_id(value):
        raise InvalidRequest(f"'name' may not begin with {KEY_ID_PREFIX!r}: that is the form "
                             "of a key id", param="name")
    return value


def check_credits(value: Any) -> int:
    return whole(value, "credits", 0, MAX_CREDITS)


def check_amount(value: Any) -> int:
    """Credits to add or to deduct: always a positive amount, so a slip of the sign
    can never turn a top-up into a deduction (that is its own explicit operation)."""
    return whole(value, "amount", 1, MAX_CREDITS)


def check_balance(balance: int, change: int) -> None:
    if abs(balance + change) > MAX_BALANCE:
        raise InvalidRequest(f"the balance would pass {MAX_BALANCE} credits either way",
                             param="amount")


def check_note(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > MAX_NOTE_CHARS):
        raise InvalidRequest(f"'note' must be a string of at most {MAX_NOTE_CHARS} characters",
                             param="note")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be true or false", param=name)
    return value


def _positive_or_null(value: Any, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 1 <= value <= MAX_LIMIT):
        raise InvalidRequest(f"'{name}' must be a whole number from 1 to {MAX_LIMIT}, or null",
                             param=name)
    return value


def _model_ids(value: Any, name: str) -> tuple[str, ...] | None:
    if value is not None and (not isinstance(value, list)
                              or not all(isinstance(m, str) and m for m in value)):
        raise InvalidRequest(f"'{name}' must be a list of model ids, or null", param=name)
    return tuple(value) if value is not None else None


def _networks(value: Any, name: str) -> tuple[str, ...]:
    """CIDR strings, each normalised (``10.1.2.3/16`` is ``10.1.0.0/16``); null or []
    takes the grant back."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_NETWORKS:
        raise InvalidRequest(f"'{name}' must be a list of at most {MAX_NETWORKS} networks "
                             "(CIDR), or null", param=name)
    networks = []
    for item in value:
        try:
            if not isinstance(item, str):
                raise TypeError(item)
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except (TypeError, ValueError):
            raise InvalidRequest(f"'{name}': {str(item)[:60]!r} is not a network (CIDR such "
                                 "as '10.20.0.0/16')", param=name) from None
    return tuple(dict.fromkeys(networks))


@dataclass(frozen=True)
class LimitField:
    """One per-key limit, as the admin API, the CLI and the OpenAPI document see it."""

    #: The JSON field, the CLI option (with dashes) and the key view's field.
    name: str
    #: The :class:`~muxproxy.store.KeyLimits` attribute it sets.
    attr: str
    #: How the CLI reads it and the OpenAPI document describes it: a true/false
    #: switch, a whole number (null clears it), or a list (null clears it).
    kind: Literal["flag", "number", "list"]
    check: Callable[[Any, str], Any]
    help: str


# A new per-key limit is one line here (plus its KeyLimits field and column).
LIMIT_FIELDS: tuple[LimitField, ...] = (
    LimitField("unlimited", "unlimited", "flag", _flag, "never refused for its balance"),
    LimitField("rpm", "rpm_limit", "number", _positive_or_null,
               "create requests per minute; null removes the limit"),
    LimitField("max_concurrent", "max_concurrent", "number", _positive_or_null,
               "unfinished jobs at once; null removes the limit"),
    LimitField("models", "allowed_models", "list", _model_ids,
               "the only model ids the key may use; null: all"),
    LimitField("webhook_allow_networks", "webhook_allow_networks", "list", _networks,
               "private networks (CIDR) this key's callbacks may reach, for this key only; "
               "null: public addresses only"),
)
LIMIT_NAMES = frozenset(f.name for f in LIMIT_FIELDS)
