"""Generate synthetic data: the purchase history, and activity files into the watched folder
(or messages to the Kafka topic).

Usage:
    jobs/generate.py purchases [--purchases 500 --users 100 --items 500 --seed 42 --append]
    jobs/generate.py events [--files 60 | --duration 60] [--events-per-file 1000]
                            [--files-per-second 1] [--users 100 --items 500 --seed 42]
                            [--bad-share 0.01] [--out-of-order-share 0.02]
                            [--sink files|kafka [--partitions 2]]

With ``--sink kafka`` each "file" is a batch of messages to ``kafka.topic`` (created with
``--partitions`` partitions if missing), produced and acknowledged before the next.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from datetime import date, datetime
from pathlib import Path

import _bootstrap  # noqa: F401
import pyarrow.parquet as pq

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.ingest.generator import (
    ActivityProfile,
    ActivityWriter,
    Catalogue,
    KafkaActivityWriter,
    generate_purchases,
    purchases_table,
    simulate_events,
)
from lib.ingest.kafka import KafkaError, create_topic

log = logging.getLogger("generate")


def parse_args(argv):
    parser = base_parser(__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("purchases", "events"):
        p = sub.add_parser(name)
        p.add_argument("--users", type=int, default=100)
        p.add_argument("--items", type=int, default=500)
        p.add_argument("--seed", type=int, default=42)
    p = sub.choices["purchases"]
    p.add_argument("--purchases", type=int, default=500, help="number of purchase rows")
    p.add_argument("--date-from", type=date.fromisoformat, default=date(2023, 1, 1))
    p.add_argument("--date-to", type=date.fromisoformat, default=date(2023, 12, 31))
    p.add_argument("--append", action="store_true", help="add a new file to an existing history")
    p = sub.choices["events"]
    p.add_argument("--events-per-file", type=int, default=1000)
    p.add_argument("--files-per-second", type=float, default=1.0, help="0: as fast as possible")
    p.add_argument("--files", type=int, help="stop after this many files")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--bad-share", type=float, default=0.0, help="share of malformed rows")
    p.add_argument("--out-of-order-share", type=float, default=0.02)
    p.add_argument(
        "--max-out-of-order-s", type=float, default=300.0, help="how late an out-of-order event arrives, at most"
    )
    p.add_argument(
        "--start",
        type=datetime.fromisoformat,
        default=datetime(2024, 1, 1),
        help="event time of the first events (UTC)",
    )
    p.add_argument("--prefix", default="activity", help="file name prefix")
    p.add_argument("--sink", choices=("files", "kafka"), default="files", help="where the events go")
    p.add_argument("--partitions", type=int, default=2, help="partitions of a Kafka topic this creates")
    p.add_argument("--manifest", help="append the ground truth of every line (JSON lines) to this file")
    args = parser.parse_args(argv)
    if args.what == "events" and args.files is None and args.duration is None:
        parser.error("events needs --files N or --duration SECONDS")
    return args


def write_purchases(args, path: str) -> None:
    catalogue = Catalogue(num_users=args.users, num_items=args.items, seed=args.seed)
    rows = generate_purchases(catalogue, args.purchases, args.date_from, args.date_to)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("part-*.parquet"))
    if existing and not args.append:
        sys.exit(f"{folder} already holds purchases; pass --append to add more, or delete it first")
    table = purchases_table(rows)
    target = folder / f"part-{len(existing):05d}-s{args.seed}.parquet"
    hidden = folder / f".{target.name}.tmp"
    pq.write_table(table, hidden)
    hidden.rename(target)
    log.info("wrote %d purchases to %s", len(rows), target)


def write_events(args, cfg) -> None:
    catalogue = Catalogue(num_users=args.users, num_items=args.items, seed=args.seed)
    events = simulate_events(
        catalogue,
        ActivityProfile(
            start=args.start, out_of_order_share=args.out_of_order_share, max_out_of_order_s=args.max_out_of_order_s
        ),
    )
    if args.sink == "kafka":
        if create_topic(cfg.kafka.bootstrap_servers, cfg.kafka.topic, args.partitions):
            log.info("created topic %s with %d partitions", cfg.kafka.topic, args.partitions)
        writer = KafkaActivityWriter(
            cfg.kafka.bootstrap_servers, cfg.kafka.topic, events, bad_share=args.bad_share, seed=args.seed
        )
        write, target = writer.write_batch, f"topic {cfg.kafka.topic} at {cfg.kafka.bootstrap_servers}"
    else:
        writer = ActivityWriter(
            Path(cfg.paths.events_dir), events, prefix=args.prefix, bad_share=args.bad_share, seed=args.seed
        )
        write, target = writer.write_file, cfg.paths.events_dir
    started = time.monotonic()
    interval = 1.0 / args.files_per_second if args.files_per_second > 0 else 0.0
    files = rows = bad = 0
    while (args.files is None or files < args.files) and (
        args.duration is None or time.monotonic() - started < args.duration
    ):
        write(args.events_per_file)
        files += 1
        # The ground truth goes out file by file: a long run must not hold it all in memory.
        rows += len(writer.manifest)
        bad += sum(1 for row in writer.manifest if row.expected_reason)
        if args.manifest:
            with open(args.manifest, "a", encoding="utf-8") as out:
                out.writelines(json.dumps(dataclasses.asdict(row)) + "\n" for row in writer.manifest)
        writer.manifest.clear()
        if interval:
            time.sleep(max(0.0, started + files * interval - time.monotonic()))
    if isinstance(writer, KafkaActivityWriter):
        writer.close()
    unit = "files" if args.sink == "files" else "batches of messages"
    log.info("wrote %d %s, %d rows (%d malformed) to %s", files, unit, rows, bad, target)
    if args.manifest:
        log.info("ground truth appended to %s", args.manifest)


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    if args.what == "purchases":
        write_purchases(args, cfg.paths.purchases)
    else:
        try:
            write_events(args, cfg)
        except (KafkaError, RuntimeError) as exc:
            log.error("%s", exc)
            sys.exit(2)


if __name__ == "__main__":
    main()
