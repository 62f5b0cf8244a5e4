"""Processes and local servers: is a process alive, a free port, does a URL answer, stop a process group."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request


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


def stop_process_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM a process group (a server and its workers), then SIGKILL what is left after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
