"""The redesign's hot micro-batch, measured before it replaces the engine's core (issue: one cheap
micro-batch). One query over the watched folder whose ``foreachBatch`` takes the raw lines to the
driver once as Arrow (``lib.ingest.line_parsing``), parses them there, adds the point-in-time
purchases (``lib.ingest.purchase_index``), folds the valid rows into the users' open sessions held
in the online store (``lib.features.live_fold``, ``lib.serve.live_state``: one transaction, the
session documents served at once), then appends ``enriched_events`` (and ``quarantine`` when the
batch has bad rows) with the exactly-once commit markers of ``lib.lake.sinks``.

A generator thread lands one file of ``--rate`` events a second (100,000 users); the script prints,
per batch, its stages and its Spark jobs, and at the end how long after a file's rename the store
served the session of the file's last event and ``enriched_events`` held its rows (p50/p95/max).

Usage: .venv/bin/python bench/hot_batch.py [--rate 2000] [--seconds 120] [--root /tmp/hot-batch]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lib.core.config import micros
from lib.core.schemas import (
    ENRICHED_EVENTS,
    ENRICHED_EVENTS_SCHEMA,
    EVENT_TS,
    INGESTED_AT,
    QUARANTINE,
    QUARANTINE_SCHEMA,
)
from lib.core.spark import get_spark
from lib.features.live_fold import EVENT_COLUMNS, fold_events
from lib.ingest.line_parsing import parse_lines, raw_lines_to_arrow, rejected_rows, valid_rows
from lib.ingest.purchase_index import PurchaseIndex
from lib.ingest.sources import activity_lines_stream, unsafe_files
from lib.lake.sinks import BatchSink, ensure_delta_table
from lib.serve.live_state import LiveState, session_documents
from lib.serve.online_store import SQLiteStore

# The tests' helpers write generated input exactly as the tests do (the project root, for tests/).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import activity_writer, generated_purchases, make_config, write_purchases  # noqa: E402


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    p50, p95 = np.percentile(values, [50, 95])
    return f"p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(values):.2f} s ({len(values)} files)"


class HotBatch:
    """The ``foreachBatch`` of the prototype."""

    def __init__(self, spark, cfg, purchases: pa.Table):
        self.spark, self.cfg = spark, cfg
        self.state = LiveState(cfg.paths.online_store)
        self.sink = BatchSink(spark, "streamrec-hotbatch")
        self.index = PurchaseIndex.from_arrow(purchases)
        self.gap = micros(cfg.sessions.gap_seconds)
        self.delay = micros(cfg.sessions.watermark_seconds)
        self.reports: list[dict] = []
        self.stored_at: dict[str, float] = {}  # file name -> when the store served its sessions
        self.committed_at: dict[str, float] = {}

    def __call__(self, batch_df, batch_id: int) -> None:
        context = self.spark.sparkContext
        group = f"hot-{batch_id}"
        context.setJobGroup(group, f"hot batch {batch_id}")
        stages, began = {}, time.monotonic()

        def lap(name: str) -> None:
            nonlocal began
            now = time.monotonic()
            stages[name] = now - began
            began = now

        lines = raw_lines_to_arrow(batch_df)
        files = lines.column("source_file").unique().to_pylist()
        lap("to_arrow")
        parsed = parse_lines(lines, self.cfg.stream.max_line_chars, unsafe_files(files, self.cfg.paths.events_dir))
        valid = valid_rows(parsed)
        lap("parse")
        events = valid.select(list(EVENT_COLUMNS)).to_pandas()
        events[EVENT_TS] = valid.column(EVENT_TS).cast(pa.int64()).to_numpy()
        past, avg = self.index.as_of(events["user_id"].to_numpy(), events[EVENT_TS].to_numpy())
        lap("enrich")
        open_sessions, open_recent, max_event = self.state.read_open(pd.unique(events["user_id"]))
        folded = fold_events(open_sessions, open_recent, events, self.gap, max_event, self.delay)
        latest = folded.latest_per_user()
        s_past, s_avg = self.index.as_of(latest["user_id"].to_numpy(), latest["session_start"].to_numpy())
        now_micros = micros(time.time())
        docs = session_documents(latest, s_past, np.where(np.isnan(s_avg), None, s_avg), now_micros)
        lap("fold")
        self.state.apply(batch_id, folded, docs, self.gap)
        stored = time.time()
        lap("store")
        ingested = pa.array([now_micros] * valid.num_rows, pa.timestamp("us", tz="UTC"))
        enriched = valid.select(["user_id", "item_id", "event_type", "event_ts", "source_file"]).append_column(
            "past_purchases", pa.array(past, pa.int64())
        )
        enriched = enriched.append_column("avg_purchase_amount", pa.array(avg, pa.float64(), from_pandas=True))
        enriched = enriched.append_column(INGESTED_AT, ingested).select(ENRICHED_EVENTS_SCHEMA.fieldNames())
        appends = [(enriched, ENRICHED_EVENTS_SCHEMA, ENRICHED_EVENTS)]
        bad = rejected_rows(parsed)
        if bad.num_rows:
            quarantine = pa.table(
                {
                    "source_file": bad.column("source_file"),
                    "raw": bad.column("value"),
                    "reason": bad.column("reason"),
                    INGESTED_AT: pa.array([now_micros] * bad.num_rows, pa.timestamp("us", tz="UTC")),
                    "rejected_lines": bad.column("rejected_lines"),
                }
            )
            appends.append((quarantine, QUARANTINE_SCHEMA, QUARANTINE))

        def append(rows: pa.Table, schema, table: str) -> None:
            context.setJobGroup(group, f"hot batch {batch_id}")  # job groups are per thread
            self.sink.append(self.spark.createDataFrame(rows, schema), self.cfg.paths.table(table), batch_id)

        # Two commits to two tables: side by side, since most of a commit's time is the driver's.
        with ThreadPoolExecutor(len(appends)) as pool:
            for done in [pool.submit(append, *a) for a in appends]:
                done.result()
        committed = time.time()
        lap("delta")
        for name in {Path(f).name for f in files}:
            self.stored_at[name], self.committed_at[name] = stored, committed
        jobs = len(context.statusTracker().getJobIdsForGroup(group))
        self.reports.append({"batch": batch_id, "rows": lines.num_rows, "jobs": jobs, **stages})
        print(
            f"batch {batch_id}: {lines.num_rows} lines, {jobs} Spark jobs, "
            + " ".join(f"{k}={v:.3f}" for k, v in stages.items()),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=2000, help="events a second, in one file a second")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--root", default="/tmp/hot-batch")
    args = parser.parse_args()
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    cfg = make_config(root)
    spark = get_spark("streamrec-hot-batch", {"spark.sql.shuffle.partitions": "2"})
    spark.sparkContext.setLogLevel("WARN")
    purchases = generated_purchases(users=args.users, items=5000, count=200_000)
    write_purchases(cfg.paths.purchases, purchases)
    for name, schema in ((ENRICHED_EVENTS, ENRICHED_EVENTS_SCHEMA), (QUARANTINE, QUARANTINE_SCHEMA)):
        ensure_delta_table(spark, cfg.paths.table(name), schema, {"delta.checkpointInterval": "30"})
    SQLiteStore(cfg.paths.online_store)
    writer = HotBatch(spark, cfg, spark.read.parquet(cfg.paths.purchases).toArrow())
    generator = activity_writer(cfg, users=args.users, items=5000, bad_share=0.01)
    generator.write_file(args.rate)  # the first batch compiles and warms up
    landed: dict[str, float] = {}
    stop = threading.Event()

    def land() -> None:
        while not stop.wait(1.0):
            path = generator.write_file(args.rate)
            landed[path.name] = time.time()

    query = (
        activity_lines_stream(spark, cfg)
        .writeStream.foreachBatch(writer)
        .option("checkpointLocation", str(root / "checkpoint"))
        .trigger(processingTime="1 second")
        .start()
    )
    while not writer.reports:
        time.sleep(0.2)
    thread = threading.Thread(target=land, daemon=True)
    thread.start()
    time.sleep(args.seconds)
    stop.set()
    time.sleep(5)
    query.stop()
    settled = [name for name in landed if name in writer.stored_at]
    print(f"files landed {len(landed)}, processed {len(settled)}")
    print("store serves the sessions:", percentiles([writer.stored_at[n] - landed[n] for n in settled]))
    print("enriched_events committed:", percentiles([writer.committed_at[n] - landed[n] for n in settled]))
    warm = pd.DataFrame(writer.reports[3:])
    print("warm batches (median / max):")
    print(warm.drop(columns="batch").agg(["median", "max"]).round(3).to_string())


if __name__ == "__main__":
    main()
