"""Trading: the pure reconcile and P&L cores, outbox payloads and drain, the order store, stream apply.

The outbox's database operations are outbox_store's (one typed method per query).

May import db, brokers, settings, logs; never the daemon, the cycles or the CLI.
"""
