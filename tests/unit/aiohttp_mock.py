"""aioresponses, made to work with the installed aiohttp.

aioresponses 0.7.9 builds ``ClientResponse`` without the ``stream_writer`` argument
that aiohttp 3.12+ requires. Every mocked response here uses a subclass that
supplies it (a stand-in that has written nothing: a mocked response sends no bytes).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
from aioresponses import aioresponses
from yarl import URL


class _CompatResponse(aiohttp.ClientResponse):
    def __init__(self, method: str, url: URL, **kw: Any) -> None:
        kw.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kw)


class MockHTTP(aioresponses):
    """``aioresponses`` whose responses are built aiohttp-3.14-compatibly."""

    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(url, method, *args, **kwargs)
