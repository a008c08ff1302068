"""Lake maintenance: compact (with --compact) and VACUUM every streamrec table with `[lake] retention`.

Usage: ./spark-submit.sh jobs/maintenance.py [--config PATH] [--compact] [--set lake.retention="24 hours"]

The stream vacuums its own tables every `lake.vacuum_every` micro-batches; this job is for a
stream that does not (vacuum_every = 0), for `recommendations`, and for schedulers. VACUUM
changes no data, so it is safe while the stream runs; nor does compaction (OPTIMIZE), which
bin-packs each table's small files first.
"""

import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import _bootstrap  # noqa: F401

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.core.fs import HadoopFS
from lib.core.schemas import TABLES
from lib.core.spark import get_spark
from lib.lake.sinks import compact, vacuum

log = logging.getLogger("maintenance")


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--compact", action="store_true", help="OPTIMIZE every table before the VACUUM")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    spark = get_spark("streamrec-maintenance", cfg=cfg)
    fs = HadoopFS(spark)
    present = [name for name in TABLES if fs.exists(f"{cfg.paths.table(name)}/_delta_log")]

    def maintain(name: str) -> None:
        if args.compact:
            compact(spark, cfg.paths.table(name))
        vacuum(spark, cfg.paths.table(name), cfg.lake.retention_hours)

    # A table's OPTIMIZE and VACUUM are many small Spark jobs, mostly waiting: tables side by side.
    with ThreadPoolExecutor(4, thread_name_prefix="maintenance") as pool:
        list(pool.map(maintain, present))
    log.info("vacuumed %d tables under %s (retention %s)", len(present), cfg.paths.lake, cfg.lake.retention)
    return 0


if __name__ == "__main__":
    sys.exit(main())
