"""The payloads of ``NOTIFY syncd_events``: one shape for every kind.

Every payload is a small JSON object ``{"kind": KIND, "account": NAME, "key": KEY}``:

| kind       | key                       |
|------------|---------------------------|
| `position` | the symbol                |
| `order`    | the broker's order id     |
| `trade`    | the trade id (a number)   |
| `account`  | the account name          |

When more than ``PER_KEY_MAX`` things of one kind changed in one commit (a first sync,
a market-wide price move), a single ``{"kind": KIND, "account": NAME, "key": "*",
"count": N}`` stands for them all: re-read that account's rows of that kind. A
payload may carry more fields (monitorCycle's ``exit``); listeners should ignore
what they do not know. Payloads are sent inside the writing transaction, so
Postgres delivers them at commit and never for a rolled-back one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

CHANNEL = "syncd_events"
PER_KEY_MAX = 100

Kind = Literal["position", "order", "trade", "account"]


def payload(kind: Kind, account: str, key: str | int, **extra: Any) -> str:
    return json.dumps({"kind": kind, "account": account, "key": key, **extra}, separators=(",", ":"))


def payloads(kind: Kind, account: str, keys: Sequence[str | int]) -> list[str]:
    """One payload per key, or one ``"key": "*"`` payload when more than ``PER_KEY_MAX`` changed.

    Each is the text :func:`payload` makes, the common head encoded once (a first sync sends
    one per position).
    """
    if len(keys) > PER_KEY_MAX:
        return [payload(kind, account, "*", count=len(keys))]
    head = _head(kind, account)
    dumps = json.dumps
    return [f"{head}{dumps(k)}}}" for k in dict.fromkeys(keys)]


def _head(kind: Kind, account: str) -> str:
    """``{"kind":KIND,"account":NAME,"key":`` as :func:`payload` writes it."""
    return f'{{"kind":{json.dumps(kind)},"account":{json.dumps(account)},"key":'
