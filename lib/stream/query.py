"""The streaming application: the main query over the watched folder (or the Kafka topic), whose
cheap micro-batches (``lib.stream.live_batch``) write the online store first, then append
``enriched_events`` and ``quarantine``; and the slow cadence (``lib.stream.slow``) that folds what
the batches left in the store into ``session_features``, ``user_profiles``, the Delta mirrors of
the live tables and ``stream_metrics`` every ``stream.slow_interval``.

Exactly once: the store applies a batch in one transaction that records its id (a replayed batch
changes nothing there), each Delta commit carries the batch it holds (``lib.lake.sinks``), and
Spark's checkpoint replays the batch a crash interrupted. With ``--available-now`` the main query
drains its input, then one slow pass folds everything, so every table is complete on exit.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from lib.core.config import STREAM_CHECKPOINT, Config
from lib.core.schemas import STREAM_TABLES, TABLE_SCHEMAS
from lib.ingest.kafka import check_topic
from lib.ingest.sources import activity_lines_stream, activity_messages_stream, ensure_dir
from lib.lake.catalog import DATABASE, register_tables
from lib.lake.checkpoint import CheckpointLock, acquire_lock, check_compatible_config
from lib.lake.sinks import ensure_delta_table
from lib.stream.live_batch import BatchReport, InjectedFault, LiveBatchWriter
from lib.stream.slow import HOT_CHECKPOINT_INTERVAL, HOT_TABLES, SlowCadence

log = logging.getLogger(__name__)

QUERY_NAME = "streamrec_activity"
# Names the jobs and tests take from here.
__all__ = ["BatchReport", "InjectedFault", "STREAM_CHECKPOINT", "run_available_now", "start_stream"]


@dataclass
class StreamStats:
    """Reports of recent batches, shared between foreachBatch and the progress listener."""

    reports: dict[int, BatchReport] = field(default_factory=dict)
    late_rows_dropped_total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, report: BatchReport) -> None:
        with self.lock:
            self.reports[report.batch_id] = report
            self.late_rows_dropped_total += report.late_rows_dropped
            for old in [b for b in self.reports if b < report.batch_id - 100]:
                del self.reports[old]

    def get(self, batch_id: int) -> BatchReport | None:
        with self.lock:
            return self.reports.get(batch_id)


def activity_stream(spark: SparkSession, cfg: Config) -> DataFrame:
    """The configured source of activity (``source.kind``), checked first where it can be."""
    if cfg.source.kind == "kafka":
        check_topic(cfg.kafka.bootstrap_servers, cfg.kafka.topic)
        return activity_messages_stream(spark, cfg)
    ensure_dir(spark, cfg.paths.events_dir)
    return activity_lines_stream(spark, cfg)


def ensure_tables(spark: SparkSession, cfg: Config) -> None:
    """Create every output table (empty) so that readers and MERGE targets exist from the start.

    The stream's tables checkpoint their Delta log every ``lake.checkpoint_interval`` commits,
    except the ones every micro-batch appends to (``HOT_TABLES``): a log checkpoint costs its
    commit seconds, so the slow pass writes theirs (``lib.stream.slow``), never a micro-batch.

    The tables are created side by side, beside the first call to the metastore (which
    ``register_tables`` makes next): each of the three is seconds of the JVM's first use."""

    def ensure(name: str) -> None:
        interval = HOT_CHECKPOINT_INTERVAL if name in HOT_TABLES else cfg.lake.checkpoint_interval
        properties = {"delta.checkpointInterval": str(interval)} if name in STREAM_TABLES else None
        ensure_delta_table(spark, cfg.paths.table(name), TABLE_SCHEMAS[name], properties)

    with ThreadPoolExecutor(4, thread_name_prefix="ensure-tables") as pool:
        catalog = pool.submit(spark.catalog.databaseExists, DATABASE)
        list(pool.map(ensure, TABLE_SCHEMAS))
        catalog.result()


class ProgressLogger(StreamingQueryListener):
    """Logs one line per micro-batch of the main query: id, input rows, rows/s, duration,
    watermark, late drops (the events query's writer logs its own batches)."""

    def __init__(self, stats: StreamStats):
        self.stats = stats
        self.terminated = threading.Event()  # the main query's end has been logged
        self._main_id: str | None = None

    def onQueryStarted(self, event) -> None:
        if event.name == QUERY_NAME:
            self._main_id = str(event.id)
        log.info("stream %s started (id %s)", event.name, event.id)

    def onQueryProgress(self, event) -> None:
        progress = event.progress
        if progress.name != QUERY_NAME:
            return
        report = self.stats.get(progress.batchId)
        duration_ms = progress.durationMs.get("triggerExecution", 0)
        if report is None:
            log.info("batch %d: %d rows in %.2f s", progress.batchId, progress.numInputRows, duration_ms / 1000)
            return
        log.info(
            "batch %d: %d rows in %.2f s (%.0f rows/s) valid=%d quarantined=%d late_dropped=%d "
            "(total %d) sessions_closed=%d open_sessions=%d watermark=%s spark_jobs=%s delta_commits=%d [%s]",
            progress.batchId,
            progress.numInputRows,
            duration_ms / 1000,
            progress.numInputRows / (duration_ms / 1000) if duration_ms else 0.0,
            report.valid_rows,
            report.quarantined_rows,
            report.late_rows_dropped,
            self.stats.late_rows_dropped_total,
            report.sessions_closed,
            report.open_sessions,
            report.watermark_text,
            report.spark_jobs,
            report.delta_commits,
            report.stages_text,
        )

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        if event.exception and "StopRequested" in event.exception:
            log.info("stream %s stopped on request", event.id)
        elif event.exception:
            log.error("stream %s failed: %s", event.id, event.exception)
        else:
            log.info("stream %s stopped", event.id)
        if str(event.id) == self._main_id:
            self.terminated.set()


@dataclass
class StreamHandle:
    """A running activity stream: the main query, its batch writer, the slow cadence and the
    progress listener."""

    spark: SparkSession
    query: StreamingQuery
    writer: LiveBatchWriter
    slow: SlowCadence
    listener: ProgressLogger
    lock: CheckpointLock

    def request_stop(self, timeout_s: float = 300.0) -> None:
        """Stop between micro-batches, quietly: no batch is interrupted halfway.

        The running batch (if any) finishes and commits; a batch that starts after the request
        writes nothing and ends as interrupted (``StopRequested``). Interrupting a batch would be
        safe too (it is replayed exactly once on restart), but it would waste its work and log
        errors. After ``timeout_s`` the query is stopped regardless.
        """
        self.writer.request_stop()
        self.slow.stop(timeout_s)
        if not self.writer.wait_until_idle(timeout_s):
            log.warning("a batch ran past %.0f s after the stop; interrupting it", timeout_s)
        self.writer.stop_ranking(timeout_s)
        # Let Spark record the finished batch in its commit log before the interrupt arrives.
        deadline = time.monotonic() + 5.0
        while (
            self.query.isActive
            and self.query.status.get("isTriggerActive")
            and not self.writer.parked_for_stop.is_set()
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        self.query.stop()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the query to end; True if it ended. Raises when it failed (not on a requested stop)."""
        try:
            return bool(self.query.awaitTermination(timeout_s))
        except StreamingQueryException as exc:
            if self.writer.stop_requested.is_set() and "StopRequested" in str(exc):
                return True
            raise

    def finish_run(self) -> None:
        """After an availableNow run ended on its own: the deferred live recommendations, then one
        slow pass, so every table is complete."""
        self.writer.rank_pending()
        self.slow.fold()

    def close(self, drain_timeout_s: float = 10.0) -> None:
        """Stop the slow cadence and the live ranking, release the checkpoint and unregister the
        listener once it logged the last events."""
        self.slow.stop()
        self.writer.stop_ranking()
        if self.query.isActive:
            self.query.stop()
        self.lock.release()
        self.listener.terminated.wait(drain_timeout_s)
        self.spark.streams.removeListener(self.listener)


def start_stream(
    spark: SparkSession, cfg: Config, available_now: bool = False, stats: StreamStats | None = None
) -> StreamHandle:
    """Take the checkpoint, create the tables, then start the main query and (unless
    ``available_now``: its run ends with one pass, ``StreamHandle.finish_run``) the slow cadence.

    Raises ``CheckpointError`` when another instance runs on the same checkpoint or the
    config is incompatible with it, ``KafkaError`` when the Kafka source's broker does not
    answer or its topic does not exist.
    """
    checkpoint = cfg.paths.checkpoint(STREAM_CHECKPOINT)
    lock = acquire_lock(spark, checkpoint)
    try:
        check_compatible_config(spark, checkpoint, cfg)
        ensure_tables(spark, cfg)
        register_tables(spark, cfg)
        stats = stats or StreamStats()
        writer = LiveBatchWriter(spark, cfg, stats)
        writer.defer_ranking = available_now
        listener = ProgressLogger(stats)
        spark.streams.addListener(listener)
        query = start_query(activity_stream(spark, cfg), writer, QUERY_NAME, cfg, available_now)
        slow = SlowCadence(spark, cfg, writer.state, writer.app_id)
        if not available_now:
            slow.start()
        return StreamHandle(spark, query, writer, slow, listener, lock)
    except BaseException:
        lock.release()
        raise


def start_query(
    source: DataFrame, writer: LiveBatchWriter, name: str, cfg: Config, available_now: bool
) -> StreamingQuery:
    """Start the main query: ``writer`` on each micro-batch of ``source``, checkpointed where the
    writer says, on the configured trigger (or availableNow)."""
    stream = source.writeStream.queryName(name).foreachBatch(writer).option("checkpointLocation", writer.checkpoint)
    if available_now:
        stream = stream.trigger(availableNow=True)
    else:
        stream = stream.trigger(processingTime=f"{cfg.stream.trigger_interval_seconds} seconds")
    return stream.start()


def run_available_now(spark: SparkSession, cfg: Config) -> StreamStats:
    """Process all input present (files, or Kafka messages) in one availableNow run, then fold the
    Delta side; raises if the query fails."""
    stats = StreamStats()
    handle = start_stream(spark, cfg, available_now=True, stats=stats)
    try:
        handle.wait()
        handle.finish_run()
    finally:
        handle.close()
    return stats
