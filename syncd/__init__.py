"""syncd: keeps brokerage accounts mirrored in PostgreSQL."""

__version__ = "0.1.0"
