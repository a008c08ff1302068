"""The first hop of issue 12 with nothing else running: the events query (``lib.stream.events``:
parse, ``enriched_events``, ``quarantine``) alone, without the main query beside it, and per
input file the delay from its landing (its modification time; files land by rename) to the
commit that made its rows visible in ``enriched_events``. It tells how fast that hop can be on
this machine; ``make bench`` measures it with the whole stream running.

    .venv/bin/python bench/hot_path.py --config X --seconds 230 &
    .venv/bin/python jobs/generate.py --config X events --users 100000 --items 2000 \\
        --events-per-file 2000 --files-per-second 1 --duration 150

The tables go to the config's lake, the checkpoint to ``<checkpoints>/events``: use a config of
its own, with ``stream.separate_events_query = true``. Prints the delay's p50 / p95 / max,
leaving out the files of the first ``--skip`` seconds (the JVM warming up).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.freshness import file_delays, summary  # noqa: E402
from lib.core.config import load_config  # noqa: E402
from lib.core.schemas import ENRICHED_EVENTS  # noqa: E402
from lib.core.spark import get_spark  # noqa: E402
from lib.ingest.sources import activity_lines_stream, ensure_dir  # noqa: E402
from lib.stream.events import EVENTS_QUERY_NAME, EventsBatchWriter  # noqa: E402
from lib.stream.query import ensure_tables, start_query  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="pipeline config (its own lake and checkpoints)")
    parser.add_argument("--seconds", type=float, default=230.0, help="how long the query runs")
    parser.add_argument("--skip", type=float, default=30.0, help="leave out files of the first this many seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    cfg = load_config(args.config, [])
    if not cfg.has_events_query:
        parser.error("the config runs no events query (stream.separate_events_query = false, or Kafka)")
    spark = get_spark("streamrec-hot-path")
    ensure_tables(spark, cfg)
    ensure_dir(spark, cfg.paths.events_dir)
    writer = EventsBatchWriter(spark, cfg)
    query = start_query(activity_lines_stream(spark, cfg), writer, EVENTS_QUERY_NAME, cfg, available_now=False)
    query.awaitTermination(args.seconds)
    query.stop()

    landed = [entry.stat().st_mtime for entry in os.scandir(cfg.paths.events_dir) if entry.is_file()]
    delays = file_delays(spark, cfg, since=min(landed, default=0.0) + args.skip)[ENRICHED_EVENTS]
    print(f"{len(delays)} files (those of the first {args.skip:.0f} s left out)")
    print(f"file landed -> enriched_events committed: {summary({ENRICHED_EVENTS: delays})[ENRICHED_EVENTS]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
