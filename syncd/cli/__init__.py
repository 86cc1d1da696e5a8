"""The ``syncd`` command line: one module per command; :mod:`syncd.cli.app` assembles them.

May import everything below it (daemon, cycles, trading, db, brokers, sim); nothing imports it.
"""

from syncd.cli.app import EXIT_CONFIG, build_parser, main

__all__ = ["EXIT_CONFIG", "build_parser", "main"]
