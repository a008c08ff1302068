"""One stream per checkpoint, and no resume with a session gap the stored state cannot follow."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from lib.lake.checkpoint import (
    LOCK_FILE,
    CheckpointError,
    acquire_lock,
    check_compatible_config,
    process_start_ticks,
)
from lib.stream.query import STREAM_CHECKPOINT, start_stream
from tests.helpers import make_config


def write_lock(folder, pid: int, start_ticks: int | None) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_FILE), "w") as out:
        json.dump(
            {"host": socket.gethostname(), "pid": pid, "pid_start_ticks": start_ticks, "started_at": "earlier"}, out
        )


def test_second_instance_is_refused_and_writes_nothing(spark, tmp_path):
    cfg = make_config(tmp_path)
    checkpoint = cfg.paths.checkpoint(STREAM_CHECKPOINT)
    other = subprocess.Popen(["sleep", "120"])
    try:
        started = process_start_ticks(other.pid)
        assert started is not None
        write_lock(checkpoint, other.pid, started)
        with pytest.raises(CheckpointError, match=rf"another stream is running .*pid {other.pid}"):
            start_stream(spark, cfg, available_now=True)
        assert not os.path.exists(cfg.paths.lake)
        assert spark.streams.active == []
        # The same pid with another start time: the holder died and its pid went to a new process.
        write_lock(checkpoint, other.pid, started - 1)
        acquire_lock(spark, checkpoint).release()
    finally:
        other.kill()
        other.wait()
    # Its holder is gone now: the lock is stale and is taken over.
    lock = acquire_lock(spark, checkpoint)
    with pytest.raises(CheckpointError):
        acquire_lock(spark, checkpoint)  # held by this live process
    lock.release()
    acquire_lock(spark, checkpoint).release()

    # A starter killed between creating the lock file and writing it leaves it empty: taken over
    # once it has stayed empty for a while, not while it may still be being written.
    lock_file = os.path.join(checkpoint, LOCK_FILE)
    open(lock_file, "w").close()
    os.utime(lock_file, (time.time() - 60, time.time() - 60))
    acquire_lock(spark, checkpoint).release()


def test_session_gap_change_is_refused_other_changes_are_not(spark, tmp_path):
    checkpoint = str(tmp_path / "checkpoint")
    check_compatible_config(spark, checkpoint, make_config(tmp_path))
    check_compatible_config(
        spark,
        checkpoint,
        make_config(
            tmp_path,
            "stream.max_files_per_trigger=8",
            "stream.trigger_interval=5 seconds",
            "sessions.watermark=1 minute",
        ),
    )
    with pytest.raises(CheckpointError, match=r"sessions.gap is '20 minutes' .* gap of 1800 s.*start over"):
        check_compatible_config(spark, checkpoint, make_config(tmp_path, "sessions.gap=20 minutes"))
