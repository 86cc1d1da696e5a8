"""``syncd run`` under a fake systemd: READY=1 once serving, WATCHDOG=1 at half WATCHDOG_USEC, STOPPING=1."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from syncd.sim import Simulator
from tests.acceptance.conftest import DaemonFactory
from tests.helpers import wait_for


@pytest.mark.slow
async def test_notify_ready_watchdog_stopping(sim: Simulator, dsn: str, daemon_factory: DaemonFactory) -> None:
    short_dir = Path(tempfile.mkdtemp(prefix="sdn-"))  # AF_UNIX paths are limited to 107 bytes
    path = short_dir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    messages: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    try:
        daemon = daemon_factory([sim.account_settings(0, "alpaca")], dsn=dsn)
        await daemon.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
        await wait_for(lambda: any(m.startswith("READY=1") for m in drain()), timeout=40, what="READY=1")
        ready_at = next(i for i, m in enumerate(messages) if m.startswith("READY=1"))
        assert await daemon.healthz() is not None  # READY only once the listener serves
        await wait_for(lambda: sum(m == "WATCHDOG=1" for m in drain()) >= 5, timeout=20, what="watchdog pings")
        assert any(m.startswith("STATUS=") for m in messages)
        assert all(m != "WATCHDOG=1" for m in messages[:ready_at])
        assert await daemon.stop() == 0
        drain()
        assert any(m.startswith("STOPPING=1") for m in messages)
    finally:
        sock.close()
        shutil.rmtree(short_dir, ignore_errors=True)
