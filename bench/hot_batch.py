"""The engine's micro-batch alone (``lib.stream.live_batch``), measured: one query over the
watched folder with the stream's own ``foreachBatch``, its Spark jobs counted per batch, and the
moments its store transaction and its Delta appends ended recorded per input file.

A generator thread lands one file of ``--rate`` events a second (``--users`` users, 1% bad rows,
no model: no live re-ranking; the slow cadence beside it); the script prints, per batch, its
stages and its Spark jobs, and at the end how long after a file's rename the store served its
sessions and ``enriched_events`` held its rows (p50/p95/max).

With ``--posts``, the HTTP API (``jobs/serve.py``) runs beside it, and every 2 s a client POSTs a
click for a random user (``POST /users/{id}/events``) and polls ``GET /users/{id}/events`` until
the click is served: the delay from the POST's answer to the session served is printed too.

Usage: .venv/bin/python bench/hot_batch.py [--rate 2000] [--seconds 120] [--root /tmp/hot-batch] [--posts]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.serving import ApiProcess, get
from lib.core.processes import free_port
from lib.core.spark import get_spark
from lib.ingest.sources import activity_lines_stream
from lib.stream.live_batch import LiveBatchWriter
from lib.stream.query import StreamStats, ensure_tables, start_query
from lib.stream.slow import SlowCadence

# The tests' helpers write generated input exactly as the tests do (the project root, for tests/).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import (  # noqa: E402
    activity_writer,
    generated_purchases,
    make_config,
    write_config_file,
    write_purchases,
)


def percentiles(values: list[float], what: str = "files") -> str:
    if not values:
        return "no samples"
    p50, p95 = np.percentile(values, [50, 95])
    return f"p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(values):.2f} s ({len(values)} {what})"


class MeasuredWriter(LiveBatchWriter):
    """The engine's micro-batch, with its Spark jobs counted and the moments its store
    transaction and its Delta appends ended recorded per input file."""

    def __init__(self, spark, cfg):
        super().__init__(spark, cfg, StreamStats())
        self.reports: list[dict] = []
        self.stored_at: dict[str, float] = {}  # file name -> when the store served its sessions
        self.committed_at: dict[str, float] = {}
        self._files: list[str] = []

    def parse(self, batch_df):
        parsed = super().parse(batch_df)
        self._files = [Path(f).name for f in parsed.column("source_file").unique().to_pylist()]
        return parsed

    def write_batch(self, batch_df, batch_id: int) -> None:
        context = self.spark.sparkContext
        group = f"hot-{batch_id}"
        context.setJobGroup(group, f"hot batch {batch_id}")
        super().write_batch(batch_df, batch_id)
        report = self.stats.get(batch_id)
        jobs = len(context.statusTracker().getJobIdsForGroup(group))
        self.reports.append({"batch": batch_id, "rows": report.input_lines, "jobs": jobs, **report.stage_s})
        print(
            f"batch {batch_id}: {report.input_lines} lines, {jobs} Spark jobs, "
            + " ".join(f"{k}={v:.3f}" for k, v in report.stage_s.items()),
            flush=True,
        )

    def _maybe_fail(self, name: str, batch_id: int) -> None:
        moments = {"store": self.stored_at, "enriched": self.committed_at}[name]
        now = time.time()
        for file in self._files:
            moments[file] = now


def post_clicks(port: int, users: int, latest_micros, stop: threading.Event, delays: list[float]) -> None:
    """Every 2 s a click for a random user at the stream's latest event time (``latest_micros()``:
    never late), timed from the POST's answer until the API serves it."""
    rng = np.random.default_rng(3)
    while not stop.wait(2.0):
        user, item = int(rng.integers(1, users + 1)), int(rng.integers(1, 5000))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(latest_micros() / 1e6))
        body = json.dumps({"item_id": item, "event_type": "click", "timestamp": stamp}).encode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", f"/users/{user}/events", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        connection.close()
        if answer.status != 202:
            continue
        answered = time.monotonic()
        while time.monotonic() - answered < 30:
            events = (get(port, f"/users/{user}/events")[1] or {}).get("events", [])
            if any(e["item_id"] == item and e["event_type"] == "click" for e in events):
                delays.append(time.monotonic() - answered)
                break
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=2000, help="events a second, in one file a second")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--root", default="/tmp/hot-batch")
    parser.add_argument(
        "--files-per-trigger",
        type=int,
        default=1000,
        help="stream.max_files_per_trigger (make bench's freshness: 1000)",
    )
    parser.add_argument("--posts", action="store_true", help="also time clicks POSTed to the API until it serves them")
    args = parser.parse_args()
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    cfg = make_config(root, f"stream.max_files_per_trigger={args.files_per_trigger}")
    spark = get_spark("streamrec-hot-batch", {"spark.sql.shuffle.partitions": "2"})
    spark.sparkContext.setLogLevel("WARN")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lib.stream.slow").setLevel(logging.INFO)  # each slow pass and its duration
    logging.getLogger("lib.lake.sinks").setLevel(logging.INFO)
    purchases = generated_purchases(users=args.users, items=5000, count=200_000)
    write_purchases(cfg.paths.purchases, purchases)
    ensure_tables(spark, cfg)
    writer = MeasuredWriter(spark, cfg)
    generator = activity_writer(cfg, users=args.users, items=5000, bad_share=0.01)
    generator.write_file(args.rate)  # the first batch compiles and warms up
    landed: dict[str, float] = {}
    stop = threading.Event()

    def land() -> None:
        while not stop.wait(1.0):
            path = generator.write_file(args.rate)
            landed[path.name] = time.time()

    query = start_query(activity_lines_stream(spark, cfg), writer, "hot-batch", cfg, available_now=False)
    slow = SlowCadence(spark, cfg, writer.state, writer.app_id)
    slow.start()
    while not writer.reports:
        time.sleep(0.2)
    thread = threading.Thread(target=land, daemon=True)
    thread.start()
    post_delays: list[float] = []
    if args.posts:
        api = ApiProcess(write_config_file(cfg, root / "serve.toml"), free_port(), root / "serve.log")

        def latest_micros() -> int:
            return writer.state.read_open([])[2]

        poster = threading.Thread(
            target=post_clicks, args=(api.port, args.users, latest_micros, stop, post_delays), daemon=True
        )
        poster.start()
    time.sleep(args.seconds)
    stop.set()
    if args.posts:
        poster.join()
        api.stop()
    time.sleep(5)
    slow.stop()
    query.stop()
    settled = [name for name in landed if name in writer.stored_at]
    print(f"files landed {len(landed)}, processed {len(settled)}")
    print("store serves the sessions:", percentiles([writer.stored_at[n] - landed[n] for n in settled]))
    print("enriched_events committed:", percentiles([writer.committed_at[n] - landed[n] for n in settled]))
    if args.posts:
        served = percentiles(post_delays, "clicks")
        print("a POSTed click served by GET /users/{id}/events, from the POST's answer:", served)
    warm = pd.DataFrame(writer.reports[3:])
    print("warm batches (median / max):")
    print(warm.drop(columns="batch").agg(["median", "max"]).round(3).to_string())


if __name__ == "__main__":
    main()
