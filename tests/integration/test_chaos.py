"""Chaos scenarios at small scale (the full scale is `make chaos`): the job stopped with SIGTERM,
then killed with kill -9 (its process group, then the wrapper alone) while files keep landing,
and a lake whose disk fills up. Both end with the verifier: 0 missing, 0 duplicated, sessions
equal to a batch recomputation."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import pytest

from bench.chaos import descendants
from lib.lake.verify import compare_lakes, read_manifest, verify
from lib.stream.query import run_available_now
from tests.helpers import (
    activity_writer,
    batches_committed,
    generated_purchases,
    make_config,
    running,
    start_stream_job,
    wait_for_batches,
    write_config_file,
    write_manifest,
    write_purchases,
)


def test_planned_stop_is_quiet_and_kill_9_of_the_group_or_wrapper_ends_the_job_and_loses_nothing(spark, tmp_path):
    rng = random.Random(11)
    cfg = make_config(tmp_path)
    write_purchases(cfg.paths.purchases, generated_purchases(users=40, items=40, count=120))
    writer = activity_writer(cfg, users=40, items=40, bad_share=0.02)
    for _ in range(3):
        writer.write_file(150)
    more_files = threading.Thread(target=lambda: [(time.sleep(2), writer.write_file(150)) for _ in range(6)])
    more_files.start()

    toml = write_config_file(cfg, tmp_path / "pipeline.toml", "[stream]\nmax_files_per_trigger = 1\n")
    log = tmp_path / "stream.log"

    def start() -> subprocess.Popen:
        return start_stream_job(toml, log)

    # A planned stop after a completed micro-batch (so that the kills below resume from committed
    # progress): SIGTERM to the wrapper ends the job with 0 and logs no error.
    seen, logged_before = batches_committed(cfg), len(log.read_text()) if log.exists() else 0
    job = start()
    wait_for_batches(cfg, job, seen, log)
    time.sleep(rng.uniform(0, 4))
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
    this_run = log.read_text()[logged_before:]
    assert "stopped" in this_run and " ERROR " not in this_run and "Traceback" not in this_run, this_run[-3000:]

    # Then SIGKILL, anywhere in start-up, planning or a batch's writes: first to the job's process
    # group, then to the wrapper alone. Either ends every process of the job (the wrapper, the
    # JVM, the Python driver and its workers); a survivor would hold the checkpoint lock and the
    # next start would be refused.
    for kill in (lambda job: os.killpg(job.pid, signal.SIGKILL), lambda job: job.kill()):
        job = start()
        time.sleep(rng.uniform(15, 35))
        processes = [job.pid, *descendants(job.pid)]
        assert len(processes) >= 3, processes  # the wrapper, the JVM and the driver at least
        kill(job)
        job.wait()
        deadline = time.monotonic() + 15
        while running(processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(processes), f"left running after the kill: {running(processes)}"
    more_files.join()

    # Restart once more on the same checkpoints and catch up (more files per batch: allowed).
    cfg = make_config(tmp_path, "stream.max_files_per_trigger=20")
    run_available_now(spark, cfg)
    checks = verify(spark, cfg, read_manifest(spark, write_manifest(writer.manifest, tmp_path / "manifest.jsonl")))
    assert all(c.ok for c in checks), checks
    assert {c.table: c.actual for c in checks}["enriched_events"] == sum(
        1 for r in writer.manifest if r.expected_reason is None
    )

    # live_sessions and session_features equal those of one run over the same input without faults.
    clean = make_config(
        tmp_path / "clean",
        f"paths.events_dir={cfg.paths.events_dir}",
        f"paths.purchases={cfg.paths.purchases}",
        "stream.max_files_per_trigger=20",
    )
    run_available_now(spark, clean)
    assert all(c.ok for c in compare_lakes(spark, cfg, clean.paths.lake)), compare_lakes(spark, cfg, clean.paths.lake)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs, grown on request: the disk that fills up and then gets space back."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; `make chaos ARGS='--only disk'` is the same scenario")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=700", "tmpfs", str(mount)], check=True)
    try:
        yield mount, lambda size: subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_with_the_cause_and_the_restart_loses_nothing(spark, tmp_path, small_disk):
    mount, resize = small_disk
    cfg = make_config(tmp_path, f"paths.lake={mount / 'lake'}", "stream.max_files_per_trigger=3")
    writer = activity_writer(cfg, users=300, items=200, bad_share=0.01)
    for _ in range(3):
        writer.write_file(3000)
    with pytest.raises(Exception, match="No space left on device"):
        run_available_now(spark, cfg)

    resize("64m")
    run_available_now(spark, cfg)
    checks = verify(spark, cfg, read_manifest(spark, write_manifest(writer.manifest, tmp_path / "manifest.jsonl")))
    assert all(c.ok for c in checks), checks
    assert {c.table: c.actual for c in checks}["enriched_events"] == sum(
        1 for r in writer.manifest if r.expected_reason is None
    )
