"""Every advisory-lock class syncd takes, in one table.

Postgres advisory locks are keyed by two int4s, ``(class, key)``, and are database-wide
(not per schema). syncd uses the first int as the *class*: four ASCII letters naming what
it guards; the second is the key within that class (an account id, a schema's
``hashtext``, a lease session number). Two classes must never be equal, or unrelated work
would serialise on (or, worse, be released by) the other's lock: ``tests/unit/test_locks.py``
holds that.

| class      | value        | guards                                              | scope       |
| ---------- | ------------ | --------------------------------------------------- | ----------- |
| MIGRATE    | ``"sync"``   | applying migrations to one schema (key hashtext)    | session     |
| ACCOUNT    | ``"acct"``   | one accountSync write of an account at a time       | transaction |
| ORDERS     | ``"trad"``   | an account's orders and trades (cycle vs stream)    | transaction |
| OUTBOX     | ``"outb"``   | one drainer of an account's outbox                  | session     |
| IMPORT     | ``"impt"``   | one importer of an account                          | transaction |
| LEASE      | ``"leas"``   | a replica's lease session (key from a sequence)     | session     |

LEASE's value is also written literally in ``sql/queries/operations.sql`` and in
migration 0009's ``lease_live_sessions()`` (a migration is never edited): the test checks
that they agree.

**Changing a value.** Until issue 12 accountSync shared the migration lock's class
(``"sync"``, key = account id vs. key = hashtext(schema)), so an accountSync could wait on
a migration whose schema hash equalled its account id. accountSync now has its own class,
``"acct"``; the migration lock kept its value, because migrations are exactly what two
versions run at once during an upgrade and they must keep serialising. A class change is
safe only when no two syncd versions run against the same database at once: during such
an overlap an old and a new accountSync of one account (a ``syncd sync`` next to a
daemon) do not exclude each other (leases still keep each account on one replica).
Stop every old process before starting the new version.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal


def _tag(letters: str) -> int:
    """Four ASCII letters as the int4 they spell (``"sync"`` -> 0x73796E63)."""
    assert len(letters) == 4 and letters.isascii()
    return int.from_bytes(letters.encode(), "big")


@dataclass(frozen=True, slots=True)
class LockInfo:
    value: int
    guards: str
    scope: Literal["session", "transaction"]


class LockClass(enum.Enum):
    """Each advisory-lock class: ``.value`` is a :class:`LockInfo`; ``.id`` the int4 for Postgres."""

    MIGRATE = LockInfo(_tag("sync"), "applying migrations to one schema (key: hashtext(schema))", "session")
    ACCOUNT = LockInfo(_tag("acct"), "one accountSync write of an account at a time (key: account id)", "transaction")
    ORDERS = LockInfo(_tag("trad"), "an account's orders and trades: cycle vs stream (key: account id)", "transaction")
    OUTBOX = LockInfo(_tag("outb"), "one drainer of an account's outbox (key: account id)", "session")
    IMPORT = LockInfo(_tag("impt"), "one importer of an account (key: account id)", "transaction")
    LEASE = LockInfo(_tag("leas"), "a replica's lease session (key: replica_session_seq)", "session")

    @property
    def id(self) -> int:
        return self.value.value


MIGRATE_LOCK_CLASS = LockClass.MIGRATE.id
SYNC_LOCK_CLASS = LockClass.ACCOUNT.id
ORDERS_LOCK_CLASS = LockClass.ORDERS.id
OUTBOX_LOCK_CLASS = LockClass.OUTBOX.id
IMPORT_LOCK_CLASS = LockClass.IMPORT.id
LEASE_LOCK_CLASS = LockClass.LEASE.id
