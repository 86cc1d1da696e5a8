"""Modules that alpaca-py imports when it is imported, loaded on their first use instead.

``import alpaca.trading.models`` runs ``alpaca/trading/__init__.py``, which imports the whole
package: its ``requests`` module imports pandas (and numpy with it) for one validator that syncd
never calls. That was about a third of a second of every ``syncd sync-once`` over Alpaca
accounts. :func:`defer` puts a stand-in in ``sys.modules``: the first read of any attribute it
lacks imports the real module, unchanged, and answers from it (the real one then is in
``sys.modules``), so whatever does use pandas gets pandas.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

DEFERRED = ("pandas",)


class Deferred(types.ModuleType):
    """A module not imported yet: any attribute it lacks imports it."""

    def __getattr__(self, attr: str) -> Any:
        real = self.__dict__.get("_deferred_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            try:
                real = importlib.import_module(self.__name__)
            except BaseException:
                sys.modules.setdefault(self.__name__, self)
                raise
            self.__dict__["_deferred_real"] = real
        return getattr(real, attr)


def defer(name: str) -> bool:
    """Make ``import name`` cheap from now on; False when it is loaded already or not installed."""
    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)
    if spec is None:
        return False
    stand_in = Deferred(name)
    stand_in.__spec__ = spec
    sys.modules[name] = stand_in
    return True
