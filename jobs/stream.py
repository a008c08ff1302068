"""The streaming job: activity files or Kafka messages -> the Delta tables and the online store (lib/stream/query.py).

Usage: ./spark-submit.sh jobs/stream.py [--config PATH] [--set k=v] [--available-now] [--run-for SECONDS]
"""

from __future__ import annotations

import logging
import signal
import sys
import time

import _bootstrap  # noqa: F401
from pyspark.errors import StreamingQueryException

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.core.spark import get_spark
from lib.ingest.kafka import KafkaError
from lib.lake.checkpoint import CheckpointError
from lib.stream.query import start_stream

log = logging.getLogger("stream")


# Root causes worth a one-line explanation, found in the error's text.
_KNOWN_FAILURES = {
    "No space left on device": "the file system of paths.lake or paths.checkpoints is full. Free space, then start "
    "the stream again: the interrupted micro-batch is replayed exactly once, nothing is lost.",
    "Permission denied": "paths.lake or paths.checkpoints is not writable by this user. Fix the permissions, then "
    "start the stream again: the interrupted micro-batch is replayed exactly once.",
    "org.apache.kafka.common.errors.TimeoutException": "the Kafka broker (kafka.bootstrap_servers) did not answer in "
    "time. Start it (scripts/kafka.sh start), then start the stream again: it resumes from the offsets in its "
    "checkpoint, nothing is lost.",
    "OffsetOutOfRangeException": "messages were deleted by the topic's retention before the stream read them (Spark's "
    "failOnDataLoss). Raise the topic's retention; to go on without them, start over on new checkpoints.",
}


def failure_hint(error: str) -> str | None:
    return next((f"{cause}: {hint}" for cause, hint in _KNOWN_FAILURES.items() if cause in error), None)


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--available-now", action="store_true", help="process everything present, then exit")
    parser.add_argument("--run-for", type=float, help="stop cleanly after this many seconds")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)

    spark = get_spark("streamrec-stream", cfg=cfg)
    try:
        stream = start_stream(spark, cfg, available_now=args.available_now)
    except (CheckpointError, KafkaError) as exc:
        log.error("not starting: %s", exc)
        return 3
    stop_requested = []

    def request_stop(signum, _frame):
        log.info("received %s, stopping after the current micro-batch", signal.Signals(signum).name)
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    source = cfg.paths.events_dir
    if cfg.source.kind == "kafka":
        source = f"topic {cfg.kafka.topic} at {cfg.kafka.bootstrap_servers}"
    log.info("reading %s, writing tables under %s", source, cfg.paths.lake)
    deadline = time.monotonic() + args.run_for if args.run_for is not None else None
    try:
        # Short waits keep the main thread responsive to signals.
        while not stream.wait(1):
            if stop_requested or (deadline is not None and time.monotonic() >= deadline):
                log.info("stopping after the current micro-batch")
                stream.request_stop()
        if args.available_now and not stream.writer.stop_requested.is_set():
            stream.finish_run()
    except StreamingQueryException as exc:
        hint = failure_hint(str(exc))
        log.error("stream failed: %s", hint or "see the error below")
        log.error("%s", exc)
        return 1
    finally:
        stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
