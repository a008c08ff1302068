"""Guards on a stream's checkpoint folder: one running instance at a time, and no restart with
a config change the stored state cannot follow."""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass

from pyspark.sql import SparkSession

from lib.config import Config

log = logging.getLogger(__name__)

LOCK_FILE = "_streamrec.lock"
CONFIG_FILE = "_streamrec_config.json"


class CheckpointError(RuntimeError):
    """The stream must not start on this checkpoint; the message says why and what to do."""


class _Files:
    """Small text files on whatever file system the checkpoint lives on."""

    def __init__(self, spark: SparkSession, folder: str):
        self._path_cls = spark._jvm.org.apache.hadoop.fs.Path
        self._io_utils = spark._jvm.org.apache.commons.io.IOUtils
        self.folder = folder.rstrip("/")
        self.fs = self._path_cls(self.folder).getFileSystem(spark._jsc.hadoopConfiguration())
        self.fs.mkdirs(self._path_cls(self.folder))

    def path(self, name: str):
        return self._path_cls(f"{self.folder}/{name}")

    def create_new(self, name: str, text: str) -> bool:
        """Atomically create ``name`` with ``text``; False if it already exists."""
        if not self.fs.createNewFile(self.path(name)):
            return False
        out = self.fs.create(self.path(name), True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()
        return True

    def read(self, name: str) -> str | None:
        if not self.fs.exists(self.path(name)):
            return None
        stream = self.fs.open(self.path(name))
        try:
            # py4j copies byte arrays, so the JVM reads the whole file into a string.
            return self._io_utils.toString(stream, "UTF-8")
        finally:
            stream.close()

    def delete(self, name: str) -> None:
        self.fs.delete(self.path(name), False)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class CheckpointLock:
    """Held by the running stream; ``release()`` (or process death) frees it."""

    files: _Files

    def release(self) -> None:
        self.files.delete(LOCK_FILE)


def acquire_lock(spark: SparkSession, checkpoint_dir: str) -> CheckpointLock:
    """Take the checkpoint for this process, or refuse with who holds it.

    A lock left by a process that died on this host (kill -9, crash) is taken over; a lock
    held by a live process, or by another host, is not.
    """
    files = _Files(spark, checkpoint_dir)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        if files.create_new(LOCK_FILE, json.dumps(me)):
            return CheckpointLock(files)
        text = files.read(LOCK_FILE)
        try:
            holder = json.loads(text) if text else {}
        except json.JSONDecodeError:
            holder = {}
        if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _process_alive(holder["pid"]):
            log.warning("taking over the lock of a stream that died (pid %s) on %s", holder["pid"], checkpoint_dir)
            files.delete(LOCK_FILE)
            continue
        if not holder:
            time.sleep(1)  # being written right now by another starter
            continue
        raise CheckpointError(
            f"another stream is running on the checkpoint {checkpoint_dir} (pid {holder.get('pid')} on "
            f"{holder.get('host')}, started {holder.get('started_at')}). Stop it first; if that process "
            f"is gone, delete {checkpoint_dir}/{LOCK_FILE}."
        )
    raise CheckpointError(f"could not take the lock {checkpoint_dir}/{LOCK_FILE}; try again")


def check_compatible_config(spark: SparkSession, checkpoint_dir: str, cfg: Config) -> None:
    """Refuse to resume a checkpoint whose open sessions were built with another session gap.

    The first start records the settings; later starts compare. ``max_files_per_trigger``,
    the trigger interval and the watermark delay may change freely between runs.
    """
    files = _Files(spark, checkpoint_dir)
    current = {"sessions.gap_seconds": cfg.sessions.gap_seconds}
    stored_text = files.read(CONFIG_FILE)
    if stored_text is None:
        files.create_new(CONFIG_FILE, json.dumps(current))
        return
    stored = json.loads(stored_text)
    if stored.get("sessions.gap_seconds") != current["sessions.gap_seconds"]:
        raise CheckpointError(
            f"sessions.gap is {cfg.sessions.gap!r} ({current['sessions.gap_seconds']:g} s) but the checkpoint "
            f"{checkpoint_dir} holds sessions built with a gap of {stored.get('sessions.gap_seconds'):g} s. "
            "Either set sessions.gap back, or start over: point paths.checkpoints and paths.lake at new "
            "folders (or delete both)."
        )
