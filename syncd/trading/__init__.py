"""Trading: the pure reconcile and P&L cores, outbox payloads and drain, the order store, stream apply.

May import db, brokers, settings, logs; never the daemon, the cycles or the CLI.
"""
