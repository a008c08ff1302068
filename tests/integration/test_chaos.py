"""Chaos scenarios at small scale (the full scale is `make chaos`): the whole job killed with
kill -9 while files keep landing, and a lake whose disk fills up. Both end with the verifier:
0 missing, 0 duplicated, sessions equal to a batch recomputation."""
from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bench.chaos import kill_tree
from lib.stream import run_available_now
from lib.verify import compare_lakes, read_manifest, verify
from tests.conftest import make_config
from tests.integration.conftest import (
    activity_writer, generated_purchases, write_config_file, write_manifest, write_purchases,
)

ROOT = Path(__file__).resolve().parents[2]
BATCH_LINE = "INFO lib.stream: batch "


def batches_logged(log: Path) -> int:
    return log.read_text(errors="replace").count(BATCH_LINE) if log.exists() else 0


def test_kill_9_of_the_whole_job_at_random_points_loses_and_duplicates_nothing(spark, tmp_path):
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
    for kill in range(2):
        seen = batches_logged(log)
        with open(log, "a") as out:
            job = subprocess.Popen([str(ROOT / "spark-submit.sh"), "jobs/stream.py", "--config", str(toml)], cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if kill == 0:
            # First after a completed micro-batch, so that the restarts resume from committed progress...
            deadline = time.monotonic() + 240
            while batches_logged(log) == seen and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert job.poll() is None and batches_logged(log) > seen, log.read_text()[-3000:]
            time.sleep(rng.uniform(0, 4))
        else:
            time.sleep(rng.uniform(15, 35))  # ...then anywhere in start-up, planning or a batch's writes
        # The wrapper, spark-submit's JVM and the Python driver; a survivor would hold the
        # checkpoint lock and the next start would be refused.
        assert kill_tree(job) >= 3
    more_files.join()

    # Restart once more on the same checkpoints and catch up (more files per batch: allowed).
    cfg = make_config(tmp_path, "stream.max_files_per_trigger=20")
    run_available_now(spark, cfg)
    checks = verify(spark, cfg, read_manifest(spark, write_manifest(writer.manifest, tmp_path / "manifest.jsonl")))
    assert all(c.ok for c in checks), checks
    assert {c.table: c.actual for c in checks}["enriched_events"] == sum(1 for r in writer.manifest if r.expected_reason is None)

    # live_sessions and session_features equal those of one run over the same input without faults.
    clean = make_config(tmp_path / "clean", f"paths.events_dir={cfg.paths.events_dir}", f"paths.purchases={cfg.paths.purchases}",
                        "stream.max_files_per_trigger=20")
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
    assert {c.table: c.actual for c in checks}["enriched_events"] == sum(1 for r in writer.manifest if r.expected_reason is None)
