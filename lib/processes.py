"""The project's detached servers (the metastore's Derby server, the Thrift server), found and
stopped by pid."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def runs(pid: int, command_part: str) -> bool:
    """True if ``pid`` is alive and its command line holds ``command_part`` (pids get reused; a
    zombie's command line is empty)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc: trust the pid
    return command_part.encode() in cmdline


def terminate(pid: int, command_part: str, timeout_s: float) -> None:
    """SIGTERM ``pid``; after ``timeout_s`` without it ending, SIGKILL its process group (the
    servers run as leaders of sessions of their own)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and runs(pid, command_part):
        time.sleep(0.2)
    if runs(pid, command_part):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            os.kill(pid, signal.SIGKILL)
