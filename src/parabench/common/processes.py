"""Processes and local servers: is a process alive, a free port, does a URL answer, wait for a condition,
stop a process group."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable


def process_alive(pid: int) -> bool:
    """True when a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port(host: str) -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def http_ok(url: str, timeout: float) -> bool:
    """True when a GET of url answers 200 (a server's health or ping page)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    interval_s: float = 0.5,
    give_up: Callable[[], bool] | None = None,
) -> bool:
    """Poll condition every interval_s: True once it holds, False when timeout_s passed or give_up() holds
    first (say, the process that should make it true has exited)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if (give_up is not None and give_up()) or time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def group_gone(pid: int) -> bool:
    """True when no process of the process group pid is left."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stop_process_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM a process group (a server and its workers), then SIGKILL what is left after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(lambda: group_gone(pid), grace_s, interval_s=0.2):
            return
