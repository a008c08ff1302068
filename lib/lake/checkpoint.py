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

from lib.core.config import Config
from lib.core.fs import HadoopFS, LocalFS
from lib.ingest.backlog import SOURCE_LOG, read_by_source_log

log = logging.getLogger(__name__)

LOCK_FILE = "_streamrec.lock"
CONFIG_FILE = "_streamrec_config.json"


class CheckpointError(RuntimeError):
    """The stream must not start on this checkpoint; the message says why and what to do."""


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); None where
    there is no such file (no /proc, or no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_ticks(fields: list[str]) -> int | None:
    return int(fields[19]) if len(fields) > 19 else None


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot, Linux); None where unknown."""
    fields = _proc_stat(pid)
    return None if fields is None else _start_ticks(fields)


def _process_alive(pid: int, started: int | None = None) -> bool:
    """Whether the process ``pid`` that started at ``started`` (when known) still runs.

    A pid is reused once its process is gone (pid_max is often only 32768, and every JVM
    thread takes one), so a live pid with another start time is another process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return True
    # A killed driver whose parent (spark-submit's JVM) died with it stays a zombie until
    # init reaps it: it exists for kill(0) but will never release the lock.
    if fields[0] in ("Z", "X"):
        return False
    return started is None or _start_ticks(fields) in (None, started)


@dataclass
class CheckpointLock:
    """Held by the running stream; ``release()`` (or process death) frees it."""

    fs: HadoopFS
    path: str

    def release(self) -> None:
        self.fs.delete(self.path)


# Seconds an empty lock file may stay empty before it counts as abandoned.
_UNWRITTEN_LOCK_GRACE_S = 10


def acquire_lock(spark: SparkSession, checkpoint_dir: str) -> CheckpointLock:
    """Take the checkpoint for this process, or refuse with who holds it.

    A lock left by a process that died on this host (kill -9, crash) is taken over; a lock
    held by a live process, or by another host, is not.
    """
    fs = HadoopFS(spark)
    fs.mkdirs(checkpoint_dir)
    lock_path = f"{checkpoint_dir.rstrip('/')}/{LOCK_FILE}"
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start_ticks": process_start_ticks(os.getpid()),
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for _ in range(3 + _UNWRITTEN_LOCK_GRACE_S):
        if fs.create_new(lock_path, json.dumps(me)):
            return CheckpointLock(fs, lock_path)
        text = fs.read_text(lock_path)
        try:
            holder = json.loads(text) if text else {}
        except json.JSONDecodeError:
            holder = {}
        if (
            holder.get("host") == me["host"]
            and isinstance(holder.get("pid"), int)
            and not _process_alive(holder["pid"], holder.get("pid_start_ticks"))
        ):
            log.warning("taking over the lock of a stream that died (pid %s) on %s", holder["pid"], checkpoint_dir)
            fs.delete(lock_path)
            continue
        if not holder:
            # Being written right now by another starter, or left empty by one killed between
            # creating the file and writing it (create_new is two steps): wait out the first.
            modified = fs.modified_ms(lock_path)
            if modified is not None and time.time() - modified / 1000 > _UNWRITTEN_LOCK_GRACE_S:
                log.warning("taking over an empty lock left by a starter that died on %s", checkpoint_dir)
                fs.delete(lock_path)
            else:
                time.sleep(1)
            continue
        raise CheckpointError(
            f"another stream is running on the checkpoint {checkpoint_dir} (pid {holder.get('pid')} on "
            f"{holder.get('host')}, started {holder.get('started_at')}). Stop it first; if that process "
            f"is gone, delete {checkpoint_dir}/{LOCK_FILE}."
        )
    raise CheckpointError(f"could not take the lock {checkpoint_dir}/{LOCK_FILE}; try again")


def check_compatible_config(spark: SparkSession, checkpoint_dir: str, cfg: Config) -> None:
    """Refuse to resume a checkpoint whose open sessions were built with another session gap or
    whose offsets belong to another source.

    The first start records the settings; later starts compare. ``max_files_per_trigger``,
    the trigger interval and the watermark delay may change freely between runs.
    """
    fs = HadoopFS(spark)
    config_path = f"{checkpoint_dir.rstrip('/')}/{CONFIG_FILE}"
    source = cfg.source.kind if cfg.source.kind == "files" else f"kafka:{cfg.kafka.topic}"
    current = {
        "sessions.gap_seconds": cfg.sessions.gap_seconds,
        "source": source,
    }
    stored_text = fs.read_text(config_path)
    if stored_text is None:
        fs.create_new(config_path, json.dumps(current))
        return
    stored = json.loads(stored_text)
    # Offsets of one source mean nothing to another: Spark would fail with an opaque error.
    if stored.get("source", "files") != source:
        raise CheckpointError(
            f"the checkpoint {checkpoint_dir} was written reading {stored.get('source', 'files')!r}, "
            f"this config reads {source!r} (source.kind, kafka.topic). Use the config it was started "
            "with, or start over: point paths.checkpoints and paths.lake at new folders."
        )
    if stored.get("sessions.gap_seconds") != current["sessions.gap_seconds"]:
        raise CheckpointError(
            f"sessions.gap is {cfg.sessions.gap!r} ({current['sessions.gap_seconds']:g} s) but the checkpoint "
            f"{checkpoint_dir} holds sessions built with a gap of {stored.get('sessions.gap_seconds'):g} s. "
            "Either set sessions.gap back, or start over: point paths.checkpoints and paths.lake at new "
            "folders (or delete both)."
        )


def batches_committed(checkpoint_dir: str | os.PathLike) -> int:
    """How many micro-batches the query of a local checkpoint folder has committed: one more than
    the highest batch id in Spark's commit log (``commits/<id>``), 0 before the first. Spark
    purges old entries of that log, so the count comes from the id, not the number of files.
    For harnesses that wait on a running stream without reading its log."""
    commits = os.path.join(checkpoint_dir, "commits")
    ids = [int(name) for name in os.listdir(commits) if name.isdigit()] if os.path.isdir(commits) else []
    return max(ids, default=-1) + 1


def has_processed(checkpoint_dir: str | os.PathLike, files) -> bool:
    """Whether the stream of a local checkpoint folder has read every one of ``files`` (its file
    source's log) and committed the batches that read them (its commit log)."""
    read, last = read_by_source_log(LocalFS(), os.path.join(checkpoint_dir, SOURCE_LOG))
    return {os.path.abspath(f) for f in files} <= read.keys() and batches_committed(checkpoint_dir) > last
