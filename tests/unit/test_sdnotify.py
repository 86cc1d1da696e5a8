"""systemd notify without a library: datagrams on $NOTIFY_SOCKET, path and abstract forms."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.daemon.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_no_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval_s is None


def test_ready_status_watchdog_stopping_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("serving\n2 accounts")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 2 accounts"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notifier.status("x" * 500)
    assert sock.recv(4096) == b"STATUS=" + b"x" * 200


def test_abstract_socket() -> None:
    name = f"syncd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert sock.recv(64) == b"READY=1"
    finally:
        sock.close()


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False  # warned once, still no exception


def test_relative_socket_path_is_ignored() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "relative.sock"}).enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], expected: float | None) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/x.sock", **env})
    assert notifier.watchdog_interval_s == expected


def test_watchdog_pid_of_this_process_is_honoured() -> None:
    env = {"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval_s == 2.0
