"""The database layer: a pool bound to syncd's schema, named queries, migrations, NOTIFY payloads.

May import: settings, logs, errors. Never brokers, trading, cycles, daemon or the CLI.
"""

from syncd.db.migrate import MigrationError, apply_migrations, current_version, pending_migrations
from syncd.db.migrate import discover as discover_migrations
from syncd.db.pool import connect, create_pool
from syncd.db.queries import Queries, load_queries, sql_dir

__all__ = [
    "MigrationError",
    "Queries",
    "apply_migrations",
    "connect",
    "create_pool",
    "current_version",
    "discover_migrations",
    "load_queries",
    "pending_migrations",
    "sql_dir",
]
