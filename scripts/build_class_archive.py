"""Dump the class-data-sharing archive of a local driver (``lib.core.paths.CLASS_ARCHIVE``): the
classes a JVM loaded while it ran the engine on a small generated lake (the stream with its slow
pass, the metastore, training), stored already parsed and verified, so every later local driver
maps them instead of loading them from the jars (``lib.core.spark.CLASS_ARCHIVE_OPTION``).

Run by ``make setup`` after the jars; about a minute once. The archive is an optimisation: when
the JVM cannot dump it, this says why and setup goes on without it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from lib.core import metastore  # noqa: E402
from lib.core.config import load_config  # noqa: E402
from lib.core.paths import CLASS_ARCHIVE  # noqa: E402
from lib.core.spark import DEFAULT_LOCAL_MASTER, driver_settings, get_spark  # noqa: E402
from lib.ingest.generator import (  # noqa: E402
    ActivityProfile,
    ActivityWriter,
    Catalogue,
    generate_purchases,
    purchases_table,
    simulate_events,
)
from lib.lake.batch import train_and_publish  # noqa: E402
from lib.stream.query import run_available_now  # noqa: E402

log = logging.getLogger("build_class_archive")


def run_engine(root: Path, dump_to: Path) -> subprocess.Popen:
    """Run the engine on a small lake under ``root`` in a driver that dumps its classes to
    ``dump_to`` when it exits; returns that driver's JVM process."""
    cfg = load_config(
        None,
        [
            f"paths.events_dir={root / 'incoming'}",
            f"paths.purchases={root / 'purchases'}",
            f"paths.lake={root / 'lake'}",
            f"paths.checkpoints={root / 'checkpoints'}",
            f"paths.online_store={root / 'online.sqlite'}",
            f"paths.metastore={root / 'metastore'}",
            'recommend.ease_lambda="50"',
        ],
    )
    catalogue = Catalogue(num_users=40, num_items=80, seed=3)
    purchases = generate_purchases(catalogue, 200)
    (root / "purchases").mkdir(parents=True)
    pq.write_table(purchases_table(purchases), str(root / "purchases" / "part-00000.parquet"))
    writer = ActivityWriter(root / "incoming", simulate_events(catalogue, ActivityProfile()), bad_share=0.05, seed=3)
    for _ in range(3):
        writer.write_file(400)
    java_options = driver_settings(DEFAULT_LOCAL_MASTER)["spark.driver.extraJavaOptions"]
    spark = get_spark(
        "streamrec-class-archive",
        {"spark.driver.extraJavaOptions": f"{java_options} -XX:ArchiveClassesAtExit={dump_to}"},
        cfg,
    )
    try:
        run_available_now(spark, cfg)
        train_and_publish(spark, cfg)
    finally:
        jvm = spark.sparkContext._gateway.proc
        spark.stop()
        metastore.stop_server(cfg.paths.metastore)
    return jvm


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    CLASS_ARCHIVE.unlink(missing_ok=True)  # the driver that dumps must not map an older archive
    with tempfile.TemporaryDirectory(prefix="streamrec-class-archive-") as scratch:
        dump_to = CLASS_ARCHIVE.with_suffix(".jsa.tmp")
        dump_to.unlink(missing_ok=True)
        try:
            jvm = run_engine(Path(scratch), dump_to)
            jvm.stdin.close()  # the gateway JVM exits at the end of its input, and dumps then
            jvm.wait(timeout=600)
        except Exception:
            log.exception("no class archive: the engine's run failed; local drivers load their classes from the jars")
            return 0
    if not dump_to.is_file():
        log.warning(
            "no class archive: the JVM (exit code %s) dumped none; local drivers load their classes from the jars",
            jvm.returncode,
        )
        return 0
    os.replace(dump_to, CLASS_ARCHIVE)
    log.info("class archive %s: %.0f MB", CLASS_ARCHIVE, CLASS_ARCHIVE.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
