"""Specification of the systemd notify protocol, against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_replicator.service.daemon import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    try:
        yield s, path
    finally:
        s.close()


def receive(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().split("\n")


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    n = SystemdNotifier({})
    assert not n.enabled
    assert n.notify("READY=1") is False
    n.start_watchdog(lambda: True)  # no thread, no error
    n.close()


def test_ready_status_and_stopping_are_sent_as_datagrams(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    n.ready("streaming")
    assert receive(s) == ["READY=1", "STATUS=streaming", f"MAINPID={os.getpid()}"]
    n.status("retrying: connection refused")
    assert receive(s) == ["STATUS=retrying: connection refused"]
    n.stopping()
    assert receive(s) == ["STOPPING=1", "STATUS=stopping"]


def test_abstract_namespace_sockets_are_supported() -> None:
    name = f"cdc-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).ready("loading")
        assert receive(s)[0] == "READY=1"
    finally:
        s.close()


def test_watchdog_pings_at_half_the_interval_only_while_alive(
    notify_socket: tuple[socket.socket, str],
) -> None:
    s, path = notify_socket
    alive = [True]
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_seconds == 0.2
    n.start_watchdog(lambda: alive[0])
    try:
        assert receive(s) == ["WATCHDOG=1"]
        assert receive(s) == ["WATCHDOG=1"]
        alive[0] = False
        time.sleep(0.3)  # let a ping that was already on its way arrive
        s.setblocking(False)
        try:
            while True:
                s.recv(4096)
        except BlockingIOError:
            pass
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(4096)  # a wedged loop stops the pings: systemd will restart the service
    finally:
        n.close()


def test_a_watchdog_meant_for_another_pid_is_ignored(notify_socket: tuple[socket.socket, str]) -> None:
    _, path = notify_socket
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    assert n.watchdog_seconds is None
