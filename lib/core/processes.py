"""The project's detached servers (the metastore's Derby server, the Thrift server, the Kafka
broker): the JVM they run on, their ports on 127.0.0.1, and finding and stopping them by pid."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import time
from contextlib import contextmanager
from pathlib import Path


def java() -> str:
    """The java executable: ``$JAVA_HOME/bin/java``, else the one on the PATH."""
    java_home = os.environ.get("JAVA_HOME")
    found = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not found:
        raise RuntimeError("java not found: install a JDK (17) or set JAVA_HOME")
    return found


def accepts_connections(port: int) -> bool:
    """True if something listens on ``port`` of 127.0.0.1."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (another process may take it first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


@contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs: starts and
    stops of one server are serialised, so that jobs started together share one server."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_record(path: Path) -> dict:
    """A server's JSON record (its ``pid``, ``port`` ...); empty if missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def live_record(path: Path, command_part: str) -> dict | None:
    """The record at ``path`` if its ``pid`` runs ``command_part`` and its ``port`` accepts
    connections on 127.0.0.1; else None."""
    record = read_record(path)
    try:
        pid, port = int(record["pid"]), int(record["port"])
    except (KeyError, TypeError, ValueError):
        return None
    return record if runs(pid, command_part) and accepts_connections(port) else None
