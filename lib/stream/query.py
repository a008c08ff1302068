"""The streaming application: the main query over the watched folder (or the Kafka topic), whose
micro-batches (``foreachBatch``, ``SessionBatchWriter``) run the steps of ``lib.stream.steps``:
they write the Delta tables and the online store (``lib.serve.online_store``); each user's live
session, profile and live recommendations reach the store as soon as they are computed, before
the Delta MERGE of the same rows. With ``stream.separate_events_query``, the events query
(``lib.stream.events``) writes ``enriched_events`` and ``quarantine`` instead, beside it.

Session state (the open sessions) is kept per batch next to the query's checkpoint
(``lib.lake.state``): batch ``b`` always reads the state of batch ``b - 1``. A batch replayed after
a crash therefore recomputes exactly the same outputs, and the sinks (``lib.lake.sinks``) commit
only the tables the crashed attempt had not committed yet: exactly once, across crashes.

A backlog (an availableNow run, ``lib.ingest.backlog``) needs only the live state after its last
batch: while more files wait, a batch keeps its live updates (``lib.features.live_updates``) under the
checkpoint instead of folding them into ``user_profiles``, ``live_sessions``,
``live_recommendations`` and the store, and the batch that finds nothing waiting folds them
all. Each table folds the batches after the last one it committed, so a crash anywhere in
between is replayed exactly once too.

Watermark: ``max event time admitted so far - sessions.watermark``, as of the start of the
batch. Events older than it are late: still written to ``enriched_events``, but dropped from
session state and counted. A session closes when the watermark after the batch has passed
``session_end + sessions.gap``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import TypeVar

from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from lib.core.config import STREAM_CHECKPOINT, Config, micros
from lib.core.schemas import (
    BATCH_ID,
    DURATION_S,
    ENRICHED_EVENTS,
    INPUT_LINES,
    LATE_ROWS_DROPPED,
    LIVE_RECOMMENDATIONS,
    LIVE_SESSIONS,
    OPEN_SESSIONS,
    QUARANTINE,
    QUARANTINED_ROWS,
    ROWS_PER_S,
    SESSION_FEATURES,
    SESSIONS_CLOSED,
    STAGE_S,
    STARTED_AT,
    STREAM_METRICS,
    STREAM_TABLES,
    TABLE_SCHEMAS,
    USER_PROFILES,
    VALID_ROWS,
    WATERMARK,
)
from lib.features.live_updates import CLOSED, batch_changes, live_updates
from lib.ingest.backlog import FileBacklog, KafkaBacklog
from lib.ingest.kafka import KafkaError, check_topic, end_offsets
from lib.ingest.sources import activity_lines_stream, activity_messages_stream, ensure_dir, read_purchases
from lib.lake.catalog import register_tables
from lib.lake.checkpoint import CheckpointLock, acquire_lock, check_compatible_config
from lib.lake.sinks import BatchSink, compact, data_files, ensure_delta_table, vacuum
from lib.lake.state import PendingUpdatesStore, SessionStateStore
from lib.recommend.live import LiveRanker
from lib.recommend.model_store import ModelStore
from lib.serve.online_store import SQLiteStore
from lib.stream.events import EVENTS_QUERY_NAME, EventsBatchWriter
from lib.stream.gate import GatedBatchWriter
from lib.stream.steps import (
    BatchContext,
    LiveFold,
    ParsedBatch,
    Persisted,
    SessionizedBatch,
    live_fold,
    merge_profiles,
    micros_literal,
    profile_rows,
    read_batch,
    sessionize_batch,
    write_enriched,
    write_item_popularity,
    write_live_recommendations,
    write_live_sessions,
    write_pending_updates,
    write_quarantine,
    write_session_features,
    write_state,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

QUERY_NAME = "streamrec_activity"
_JOB_DESCRIPTION = "spark.job.description"  # SparkContext's local property
SESSION_STATE_DIR = "session_state"
PENDING_UPDATES_DIR = "pending_updates"
# The tables the stream compacts: those only it writes (``lib.core.schemas.STREAM_TABLES``; jobs/train.py
# could be rewriting ``recommendations`` at the same time), in the order a tie is broken.
COMPACTED_TABLES = (
    ENRICHED_EVENTS,
    LIVE_SESSIONS,
    USER_PROFILES,
    LIVE_RECOMMENDATIONS,
    SESSION_FEATURES,
    STREAM_METRICS,
    QUARANTINE,
)


def due(batch_id: int, every: int) -> bool:
    """Whether batch ``batch_id`` runs a task done one batch in ``every`` (0: never)."""
    return every > 0 and batch_id > 0 and batch_id % every == 0


def table_to_compact(file_counts: dict[str, int]) -> str | None:
    """The stream table with the most data files (``file_counts``: table -> count), or None
    when none has more than one.

    Picking the most fragmented table rather than each in turn bounds every table by the
    growth of all of them over a few compactions, not over a full round of seven.
    """
    name, files = max(((t, file_counts.get(t, 0)) for t in COMPACTED_TABLES), key=lambda pair: pair[1])
    return name if files > 1 else None


class InjectedFault(RuntimeError):
    """Raised by the fault-injection hook to simulate a crash inside a micro-batch."""


@dataclass
class BatchReport:
    """What one micro-batch did; logged by the progress listener and kept in stream_metrics."""

    batch_id: int
    input_lines: int = 0
    valid_rows: int = 0
    quarantined_rows: int = 0
    late_rows_dropped: int = 0
    sessions_closed: int = 0
    open_sessions: int = 0
    watermark_micros: int | None = None
    input_waiting: int = 0
    duration_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        """Time a stage of the batch (wall clock, including the Spark jobs it runs)."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.stage_s[name] = self.stage_s.get(name, 0.0) + time.monotonic() - began

    def record_input(self, batch: ParsedBatch) -> None:
        self.input_lines, self.valid_rows = batch.rows, batch.valid_rows
        self.quarantined_rows, self.late_rows_dropped = batch.quarantined_rows, batch.late_rows

    def record_sessions(self, batch: SessionizedBatch) -> None:
        self.watermark_micros = batch.watermark_micros
        self.sessions_closed, self.open_sessions = batch.closed, batch.open

    @property
    def stages_text(self) -> str:
        return " ".join(f"{k}={v:.2f}" for k, v in self.stage_s.items())

    @property
    def watermark_text(self) -> str:
        return format_micros(self.watermark_micros)


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
    """Create every output table (empty) so that readers and MERGE targets exist from the start;
    the stream's own tables checkpoint their Delta log every ``lake.checkpoint_interval`` commits."""
    checkpoints = {"delta.checkpointInterval": str(cfg.lake.checkpoint_interval)}
    for name, schema in TABLE_SCHEMAS.items():
        ensure_delta_table(spark, cfg.paths.table(name), schema, checkpoints if name in STREAM_TABLES else None)


def format_micros(timestamp_micros: int | None) -> str:
    """A UTC timestamp in microseconds since the epoch, as text (``-`` for none)."""
    if timestamp_micros is None:
        return "-"
    return datetime.fromtimestamp(timestamp_micros / 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


class SessionBatchWriter(GatedBatchWriter):
    """The ``foreachBatch`` function of the main query: ``writer(batch_df, batch_id)``.

    A plain callable, so tests can feed it static DataFrames.
    """

    def __init__(
        self,
        spark: SparkSession,
        cfg: Config,
        stats: StreamStats | None = None,
        app_id: str | None = None,
        fail_after: str | None = None,
        backlog: FileBacklog | None = None,
    ):
        """:param fail_after: fault injection for crash tests (off by default): raise
        ``InjectedFault`` right after the named write ("enriched", "live_sessions", ...).
        :param backlog: the files an availableNow run has still to read; while any wait, a batch
        leaves its live updates to a later one."""
        super().__init__(spark, cfg.paths.checkpoint(STREAM_CHECKPOINT), app_id)
        self.cfg = cfg
        self.stats = stats or StreamStats()
        self.fail_after = fail_after
        self.backlog = backlog
        # Else the events query (lib.stream.events) writes enriched_events and quarantine.
        self.writes_events = not cfg.has_events_query
        self._maintenance = ThreadPoolExecutor(1, thread_name_prefix="maintenance")
        self._vacuum: Future | None = None
        self.store = SQLiteStore(cfg.paths.online_store)
        self._store_bound = False
        self._ranker: tuple[str, LiveRanker] | None = None  # (model version, its ranker)
        self._purchase_files: list[str] | None = None  # as of the last profile update

    def state_store(self) -> SessionStateStore:
        return SessionStateStore(self.spark, self.cfg.paths.checkpoint(f"{SESSION_STATE_DIR}/{self.app_id()}"))

    def pending_store(self) -> PendingUpdatesStore:
        return PendingUpdatesStore(self.spark, self.cfg.paths.checkpoint(f"{PENDING_UPDATES_DIR}/{self.app_id()}"))

    def finish_run(self) -> None:
        """After an availableNow run ended on its own: fold the updates its batches left, should
        its last batch have left them (``lib.ingest.backlog`` counts waiting files conservatively, so
        this is a safety net, not the rule)."""
        pending, state_store = self.pending_store(), self.state_store()
        left, states = pending.batches(), state_store.batches()
        if not left or not states:
            return
        last = states[-1]
        log.warning("batches %s left live updates no later batch folded; folding them as batch %d", left, last)
        self.bind_store()
        with Persisted() as persisted:
            ctx = self._context(last, micros(time.time()), persisted.keep)
            sessions = ctx.keep(state_store.read_before(last + 1).withColumn(CLOSED, F.lit(False)))
            fold = live_fold(ctx, pending, sessions, None)
            step = partial(self._step, BatchReport(last))
            step("live_sessions", write_live_sessions, ctx, fold)
            self._fold_profiles_then_recommendations(ctx, fold, step)
            pending.delete_through(last)

    def current_ranker(self) -> tuple[str, LiveRanker] | None:
        """The latest committed model's version and ranker, rebuilt when ``jobs/train.py``
        commits a new one."""
        store = ModelStore.for_config(self.spark, self.cfg)
        latest = store.latest_version()
        if latest is None:
            if self._ranker is None:
                log.debug("no model yet: live_recommendations wait for jobs/train.py")
        elif self._ranker is None or self._ranker[0] != latest:
            model = store.load(latest)
            ranker = LiveRanker(
                self.spark,
                model.user_scores,
                model.item_neighbours,
                model.popularity,
                self.cfg.recommend,
                model.sessions,
            )
            if self._ranker is not None:
                self._ranker[1].close()
            self._ranker = (latest, ranker)
            log.info("live recommendations now use model %s", latest)
        return self._ranker

    def write_batch(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        started_at = micros(time.time())
        report = BatchReport(batch_id)
        with Persisted() as persisted:
            self._process(batch_df, batch_id, started_at, report, persisted.keep)
        report.duration_s = time.monotonic() - started
        self.stats.record(report)

    def bind_store(self) -> None:
        """Tie the online store to this stream once (a store of a former stream is reset)."""
        if not self._store_bound:
            self.store.bind(self.app_id())
            self._store_bound = True

    def _start_vacuum(self) -> None:
        """VACUUM the stream's tables in the background: it takes seconds a table and changes no
        data, so no micro-batch waits for it. One run at a time; a run still going skips this one."""
        if self._vacuum is not None and not self._vacuum.done():
            log.info("the previous VACUUM is still running; skipping this one")
            return

        def vacuum_tables():
            try:
                for name in COMPACTED_TABLES:
                    vacuum(self.spark, self.cfg.paths.table(name), self.cfg.lake.retention_hours)
            except Exception:
                log.exception("VACUUM failed; the stream goes on and tries again later")

        self._vacuum = self._maintenance.submit(vacuum_tables)

    def close(self) -> None:
        """Wait for background maintenance (a VACUUM) to end."""
        self._maintenance.shutdown(wait=True)

    def _context(self, batch_id: int, started_at: int, keep: Callable[[DataFrame], DataFrame]) -> BatchContext:
        """The context of batch ``batch_id``, which persists with ``keep``."""
        return BatchContext(
            spark=self.spark,
            cfg=self.cfg,
            batch_id=batch_id,
            sink=BatchSink(self.spark, self.app_id()),
            store=self.store,
            purchases=keep(read_purchases(self.spark, self.cfg.paths.purchases)),
            ingested_at=micros_literal(started_at),
            keep=keep,
        )

    @contextmanager
    def _stage(self, report: BatchReport, name: str):
        """Time stage ``name`` of the batch; its Spark jobs are described as
        ``streamrec batch <id>: <stage>`` (the web UI, event logs), on this thread only."""
        context = self.spark.sparkContext
        previous = context.getLocalProperty(_JOB_DESCRIPTION)
        context.setJobDescription(f"streamrec batch {report.batch_id}: {name}")
        try:
            with report.stage(name):
                yield
        finally:
            context.setLocalProperty(_JOB_DESCRIPTION, previous)

    def _step(self, report: BatchReport, name: str, write: Callable[..., T], *args) -> T:
        """Run one step of ``lib.stream.steps``, timed as stage ``name``, then the fault
        injection of crash tests."""
        with self._stage(report, name):
            result = write(*args)
        if name == self.fail_after:
            raise InjectedFault(f"fault injected after the {name} write of batch {report.batch_id}")
        return result

    def _fold_profiles_then_recommendations(self, ctx: BatchContext, fold: LiveFold, step) -> None:
        """The live recommendations exclude what the users' new profiles hold; they are ranked
        while the profiles' MERGE runs."""
        profiles = step("profile_rows", profile_rows, ctx, fold, self._purchase_files)
        if profiles is not None:
            self._purchase_files = profiles.purchase_files
        with ThreadPoolExecutor(1, thread_name_prefix=f"batch-{ctx.batch_id}-profiles") as pool:
            merged = pool.submit(step, "user_profiles", merge_profiles, ctx, profiles) if profiles else None
            step("live_recommendations", write_live_recommendations, ctx, fold, profiles, self.current_ranker())
        if merged is not None:
            merged.result()

    def _process(
        self, batch_df, batch_id, started_at, report: BatchReport, keep: Callable[[DataFrame], DataFrame]
    ) -> None:
        state_store, pending = self.state_store(), self.pending_store()
        self.bind_store()
        step = partial(self._step, report)
        with self._stage(report, "parse"):
            ctx = self._context(batch_id, started_at, keep)
            state = ctx.keep(state_store.read_before(batch_id))
            batch = read_batch(ctx, batch_df, state)
        report.record_input(batch)
        # The events and the quarantine go first: they need no session state.
        if self.writes_events:
            step("enriched", write_enriched, ctx, batch)
            step("quarantine", write_quarantine, ctx, batch)
        with self._stage(report, "sessionize"):
            sessionized = sessionize_batch(ctx, batch, state)
        report.record_sessions(sessionized)
        changes = batch_changes(
            batch.events, sessionized.sessions, self.cfg.recommend, has_events=bool(batch.valid_rows)
        )
        report.input_waiting = self.backlog.waiting_after(batch_id) if self.backlog is not None else 0
        if report.input_waiting:
            # More of the backlog waits: the live tables need only the state after its last batch.
            updates = live_updates(changes, sessionized.sessions, batch_id)
            live = [partial(step, "pending_updates", write_pending_updates, ctx, pending, updates)]
        else:
            own = changes if batch.valid_rows or sessionized.closed else None
            fold = live_fold(ctx, pending, sessionized.sessions, own)
            live = [
                partial(step, "live_sessions", write_live_sessions, ctx, fold),
                partial(self._fold_profiles_then_recommendations, ctx, fold, step),
            ]
        # Each write is exactly once on its own, so neither their order nor a crash between them
        # matters; within a chain a step may need the one before it. The chains run side by
        # side: a micro-batch's time is mostly planning and Delta's bookkeeping on the driver,
        # not work on the executors' cores.
        _run_side_by_side(
            [
                [live[0], partial(step, "item_popularity", write_item_popularity, ctx, batch)],
                live[1:],
                [
                    partial(step, "session_features", write_session_features, ctx, sessionized),
                    partial(step, "state", write_state, ctx, state_store, sessionized),
                ],
            ],
            thread_name_prefix=f"batch-{batch_id}",
        )
        if not report.input_waiting:
            pending.delete_through(batch_id)
        if due(batch_id, self.cfg.stream.compact_every):
            with self._stage(report, "compact"):
                compact_most_fragmented(ctx)
        if due(batch_id, self.cfg.lake.vacuum_every):
            self._start_vacuum()
        with self._stage(report, "metrics"):
            report.duration_s = time.time() - started_at / 1_000_000
            ctx.sink.append(_metrics_row(self.spark, report, started_at), ctx.table(STREAM_METRICS), batch_id)
        self.store.finish_batch(batch_id, datetime.now(timezone.utc))


def _run_side_by_side(chains: list[list[Callable[[], object]]], thread_name_prefix: str) -> None:
    """Run each chain's steps in order, the chains in parallel threads; raise the first failure."""
    chains = [chain for chain in chains if chain]
    with ThreadPoolExecutor(len(chains), thread_name_prefix=thread_name_prefix) as pool:
        outcomes = [pool.submit(lambda steps: [run() for run in steps], chain) for chain in chains]
    failures = [f.exception() for f in outcomes if f.exception() is not None]
    if failures:
        raise failures[0]


def compact_most_fragmented(ctx: BatchContext) -> None:
    """Compact the stream table with the most data files (``table_to_compact``)."""
    name = table_to_compact({t: data_files(ctx.spark, ctx.table(t)) for t in COMPACTED_TABLES})
    if name:
        compact(ctx.spark, ctx.table(name))


def _metrics_row(spark: SparkSession, report: BatchReport, started_at: int) -> DataFrame:
    rows_per_s = report.input_lines / report.duration_s if report.duration_s > 0 else None
    return spark.range(1).select(
        F.lit(report.batch_id).cast("long").alias(BATCH_ID),
        micros_literal(started_at).alias(STARTED_AT),
        F.lit(report.input_lines).cast("long").alias(INPUT_LINES),
        F.lit(report.valid_rows).cast("long").alias(VALID_ROWS),
        F.lit(report.quarantined_rows).cast("long").alias(QUARANTINED_ROWS),
        F.lit(report.late_rows_dropped).cast("long").alias(LATE_ROWS_DROPPED),
        F.lit(report.sessions_closed).cast("long").alias(SESSIONS_CLOSED),
        F.lit(report.open_sessions).cast("long").alias(OPEN_SESSIONS),
        micros_literal(report.watermark_micros).alias(WATERMARK),
        F.lit(report.duration_s).cast("double").alias(DURATION_S),
        F.lit(rows_per_s).cast("double").alias(ROWS_PER_S),
        F.create_map(*[F.lit(x) for stage in report.stage_s.items() for x in stage])
        .cast("map<string,double>")
        .alias(STAGE_S),
    )


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
            "(total %d) sessions_closed=%d open_sessions=%d watermark=%s [%s]",
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
    """A running activity stream: the main query, the events query when the events have one
    (``lib.stream.events``), their batch writers and the progress listener."""

    spark: SparkSession
    query: StreamingQuery
    writer: SessionBatchWriter
    listener: ProgressLogger
    lock: CheckpointLock
    events_query: StreamingQuery | None = None
    events_writer: EventsBatchWriter | None = None

    @property
    def _queries(self) -> list[tuple[StreamingQuery, GatedBatchWriter]]:
        queries = [(self.query, self.writer)]
        if self.events_query is not None:
            queries.append((self.events_query, self.events_writer))
        return queries

    def request_stop(self, timeout_s: float = 300.0) -> None:
        """Stop between micro-batches, quietly: no batch is interrupted halfway.

        The running batch of each query (if any) finishes and commits; a batch that starts after
        the request writes nothing and ends as interrupted (``StopRequested``). Interrupting a
        batch would be safe too (it is replayed exactly once on restart), but it would waste its
        work and log errors. After ``timeout_s`` the queries are stopped regardless.
        """
        for _, writer in self._queries:
            writer.request_stop()
        for query, writer in self._queries:
            if not writer.wait_until_idle(timeout_s):
                log.warning("a batch of %s ran past %.0f s after the stop; interrupting it", query.name, timeout_s)
            # Let Spark record the finished batch in its commit log before the interrupt arrives.
            deadline = time.monotonic() + 5.0
            while (
                query.isActive
                and query.status.get("isTriggerActive")
                and not writer.parked_for_stop.is_set()
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            query.stop()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for every query to end; True if they all ended. Raises as soon as one failed
        (not on a requested stop): the others are stopped by ``close``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            running = [(query, writer) for query, writer in self._queries if not self._ended(query, writer, 0.001)]
            if not running:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._ended(*running[0], 0.5 if left is None else min(0.5, left))

    @staticmethod
    def _ended(query: StreamingQuery, writer: GatedBatchWriter, timeout_s: float) -> bool:
        try:
            return bool(query.awaitTermination(timeout_s))
        except StreamingQueryException as exc:
            if writer.stop_requested.is_set() and "StopRequested" in str(exc):
                return True
            raise

    def finish_run(self) -> None:
        """After an availableNow run ended on its own (see ``SessionBatchWriter.finish_run``)."""
        self.writer.finish_run()

    def close(self, drain_timeout_s: float = 10.0) -> None:
        """Release the checkpoint and unregister the listener once it logged the last events."""
        for query, _ in self._queries:
            if query.isActive:
                query.stop()
        self.writer.close()
        self.lock.release()
        self.listener.terminated.wait(drain_timeout_s)
        self.spark.streams.removeListener(self.listener)


def start_stream(
    spark: SparkSession, cfg: Config, available_now: bool = False, stats: StreamStats | None = None
) -> StreamHandle:
    """Take the checkpoint, create the tables, then start the activity stream: the main query,
    and the events query when the events have one (``lib.stream.events``).

    Raises ``CheckpointError`` when another instance runs on the same checkpoint or the
    config is incompatible with it, ``KafkaError`` when the Kafka source's broker does not
    answer or its topic does not exist.
    """
    checkpoint = cfg.paths.checkpoint(STREAM_CHECKPOINT)
    lock = acquire_lock(spark, checkpoint)
    events_query = None
    try:
        check_compatible_config(spark, checkpoint, cfg)
        ensure_tables(spark, cfg)
        register_tables(spark, cfg)
        events_writer = None
        if cfg.has_events_query:
            events_writer = EventsBatchWriter(spark, cfg)
            events_source = activity_stream(spark, cfg)
            events_query = start_query(events_source, events_writer, EVENTS_QUERY_NAME, cfg, available_now)
        stats = stats or StreamStats()
        backlog = _backlog(spark, cfg, checkpoint) if available_now and cfg.stream.defer_live_in_backlog else None
        batch_writer = SessionBatchWriter(spark, cfg, stats, backlog=backlog)
        listener = ProgressLogger(stats)
        spark.streams.addListener(listener)
        query = start_query(activity_stream(spark, cfg), batch_writer, QUERY_NAME, cfg, available_now)
        return StreamHandle(spark, query, batch_writer, listener, lock, events_query, events_writer)
    except BaseException:
        if events_query is not None:
            events_query.stop()
        lock.release()
        raise


def start_query(
    source: DataFrame, writer: GatedBatchWriter, name: str, cfg: Config, available_now: bool
) -> StreamingQuery:
    """Start one query of the stream: ``writer`` on each micro-batch of ``source``, checkpointed
    where the writer says, on the configured trigger (or availableNow)."""
    stream = source.writeStream.queryName(name).foreachBatch(writer).option("checkpointLocation", writer.checkpoint)
    if available_now:
        stream = stream.trigger(availableNow=True)
    else:
        stream = stream.trigger(processingTime=f"{cfg.stream.trigger_interval_seconds} seconds")
    return stream.start()


def _backlog(spark: SparkSession, cfg: Config, checkpoint: str) -> FileBacklog | KafkaBacklog | None:
    """What the availableNow run about to start has to read, taken before it starts."""
    if cfg.source.kind == "files":
        return FileBacklog(spark, cfg.paths.events_dir, checkpoint)
    try:
        offsets = end_offsets(cfg.kafka.bootstrap_servers, cfg.kafka.topic, cfg.kafka.options)
    except KafkaError as exc:
        log.warning("%s; every batch of this run updates the live tables", exc)
        return None
    log.info("end offsets of topic %r before this run: %s", cfg.kafka.topic, offsets)
    return KafkaBacklog(spark, checkpoint, offsets)


def run_available_now(spark: SparkSession, cfg: Config) -> StreamStats:
    """Process all input present (files, or Kafka messages) in one availableNow run; raises if the
    query fails."""
    stats = StreamStats()
    handle = start_stream(spark, cfg, available_now=True, stats=stats)
    try:
        handle.wait()
        handle.finish_run()
    finally:
        handle.close()
    return stats
