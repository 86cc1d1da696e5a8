"""The advisory-lock registry (syncd.db.locks): one table, every class distinct, SQL agreeing with it.

Guards issue 12's "one registry of advisory-lock classes": accountSync used to share the
migration lock's class, so an accountSync could wait on a migration of a schema whose
hashtext equalled its account id.
"""

from __future__ import annotations

import re
from pathlib import Path

from syncd.cycles import account_sync, importer
from syncd.db import locks
from syncd.db.locks import LockClass
from syncd.trading import order_store, outbox

ROOT = Path(__file__).resolve().parents[2]


def test_every_lock_class_is_distinct_and_fits_an_int4() -> None:
    ids = [c.id for c in LockClass]
    assert len(set(ids)) == len(ids) == 6
    assert all(0 < i < 2**31 for i in ids)


def test_account_sync_no_longer_shares_the_migration_lock_class() -> None:
    assert LockClass.ACCOUNT.id != LockClass.MIGRATE.id
    assert LockClass.ACCOUNT.id == account_sync.SYNC_LOCK_CLASS
    assert LockClass.MIGRATE.id == locks.MIGRATE_LOCK_CLASS == 0x73796E63  # unchanged: "sync"


def test_the_old_constant_names_come_from_the_registry() -> None:
    assert order_store.ORDERS_LOCK_CLASS == LockClass.ORDERS.id == 0x74726164
    assert outbox.OUTBOX_LOCK_CLASS == LockClass.OUTBOX.id == 0x6F757462
    assert importer.IMPORT_LOCK_CLASS == LockClass.IMPORT.id == 0x696D7074
    assert LockClass.LEASE.id == locks.LEASE_LOCK_CLASS


def test_no_module_defines_its_own_lock_class() -> None:
    for path in (ROOT / "syncd").rglob("*.py"):
        if path.name == "locks.py":
            continue
        text = path.read_text()
        assert not re.search(r"^\w*LOCK_CLASS\s*=", text, re.M), path
        assert "0x7" not in text and "0x6" not in text, path


def test_the_lease_class_written_in_sql_is_the_registered_one() -> None:
    """The lease class is a literal in the queries and in migration 0009 (never edited)."""
    for sql in (ROOT / "sql" / "queries" / "operations.sql", ROOT / "sql" / "0009_lease_sessions.sql"):
        literals = {int(n) for n in re.findall(r"\b(\d{10})\b", sql.read_text())} - {2**31 - 1}
        assert literals == {LockClass.LEASE.id}, sql
