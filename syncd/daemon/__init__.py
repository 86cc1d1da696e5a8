"""The long-running daemon: supervisor task loops, leases, passes, market cadence, health, metrics, sd_notify.

May import cycles, trading, db, brokers, settings, logs; never the CLI.
"""
