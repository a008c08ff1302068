"""The streaming application: one query over the watched folder whose micro-batches
(``foreachBatch``) write the Delta tables and the online store (``lib.online_store``): each
user's live session, profile and live recommendations reach the store as soon as they are
computed, before the Delta MERGE of the same rows.

Session state (the open sessions) is kept per batch next to the query's checkpoint
(``lib.state``): batch ``b`` always reads the state of batch ``b - 1``. A batch replayed after
a crash therefore recomputes exactly the same outputs, and the sinks (``lib.sinks``) commit
only the tables the crashed attempt had not committed yet: exactly once, across crashes.

A backlog (an availableNow run, ``lib.backlog``) needs only the live state after its last
batch: while more files wait, a batch keeps its live updates (``lib.live_updates``) under the
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

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark.errors import StreamingQueryException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from lib.backlog import FileBacklog, KafkaBacklog
from lib.catalog import register_tables
from lib.checkpoint import CheckpointLock, acquire_lock, check_compatible_config
from lib.config import Config, micros
from lib.enrich import with_purchase_history
from lib.interactions import event_weight
from lib.kafka import KafkaError, check_topic, end_offsets
from lib.live import LiveRanker, live_exclusions
from lib.live_updates import (
    CLOSED,
    RANKED,
    UPDATE_COLUMNS,
    BatchChanges,
    batch_changes,
    live_updates,
    session_pool,
    updates_after,
)
from lib.model_store import ModelStore
from lib.online_sink import recommendation_docs, user_docs
from lib.online_store import SQLiteStore
from lib.parsing import parse_activity_lines, parse_activity_messages, quarantine_rows, valid_events
from lib.profiles import TOTALS_COLUMNS, add_profile_totals, sum_profile_totals, with_profile_metrics
from lib.schemas import (
    ENRICHED_EVENTS,
    ENRICHED_EVENTS_SCHEMA,
    EVENT_TS,
    INGESTED_AT,
    IS_OPEN,
    ITEM_ENGAGEMENT,
    ITEM_ID,
    LIVE_RECOMMENDATIONS,
    LIVE_SESSIONS,
    LIVE_SESSIONS_SCHEMA,
    PROFILE_COLUMNS,
    QUARANTINE,
    RANK,
    RECENT_EVENTS,
    SESSION_END,
    SESSION_FEATURES,
    SESSION_FEATURES_SCHEMA,
    SESSION_ID,
    SESSION_START,
    SESSION_STATE_SCHEMA,
    SOURCE_FILE,
    STREAM_METRICS,
    TABLE_SCHEMAS,
    UPDATED_AT,
    USER_ID,
    USER_PROFILES,
    USER_PROFILES_SCHEMA,
)
from lib.sessions import event_fragments, is_closed, latest_session_per_user, merge_sessions, with_session_metrics
from lib.sinks import BatchSink, compact, data_files, ensure_delta_table, vacuum
from lib.sources import activity_lines_stream, activity_messages_stream, ensure_dir, read_purchases, unsafe_files
from lib.state import PendingUpdatesStore, SessionStateStore

log = logging.getLogger(__name__)

QUERY_NAME = "streamrec_activity"
STREAM_CHECKPOINT = "stream"
SESSION_STATE_DIR = "session_state"
PENDING_UPDATES_DIR = "pending_updates"
# The tables only the state after a backlog's last batch matters for: a batch may leave them to
# a later one while more input waits (``lib.backlog``).
LIVE_TABLES = (USER_PROFILES, LIVE_SESSIONS, LIVE_RECOMMENDATIONS)

# The tables the stream compacts: those only it writes (``lib.schemas.STREAM_TABLES``; jobs/train.py
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


# A profile row is rewritten when the batch touched its user or its purchase side changed.
_PROFILE_CHANGED = (
    "s._touched OR NOT (t.past_purchases <=> s.past_purchases "
    "AND t.avg_purchase_amount <=> s.avg_purchase_amount AND t.top_items <=> s.top_items)"
)


class InjectedFault(RuntimeError):
    """Raised by the fault-injection hook to simulate a crash inside a micro-batch."""


class StopRequested(RuntimeError):
    """Ends a micro-batch that started after a stop was requested, before it writes anything.

    Its message has the shape Spark's stream execution recognises as "interrupted by stop()"
    in a Python ``foreachBatch`` (a Py4J call that raised ``InterruptedException``, SPARK-39218),
    so the query ends as stopped, not failed, and nothing logs an error. It is kept short: Spark
    matches it with a regular expression that overflows the stack on a long Java trace.
    """

    MESSAGE = (
        "py4j.protocol.Py4JJavaError: An error occurred while calling z:java.lang.Thread.sleep.\n"
        ": java.lang.InterruptedException: stop requested; batch {batch_id} is left for the next run"
    )


class _QuietStopRequested(logging.Filter):
    """Drops py4j's ERROR report of a ``StopRequested``: a planned stop is not a failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StopRequested))


logging.getLogger("py4j.clientserver").addFilter(_QuietStopRequested())


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


def parse_batch(batch_df: DataFrame, cfg: Config, keep: Callable[[DataFrame], DataFrame]) -> DataFrame:
    """The micro-batch's input parsed with the rules of its source (``lib.parsing``)."""
    if cfg.source.kind == "kafka":
        return parse_activity_messages(batch_df, cfg.stream.max_line_chars)
    # Cached so the files are read once: parsing looks at them twice (headers, lines).
    lines = keep(batch_df.withColumn("line_id", F.monotonically_increasing_id()))
    files = [row[0] for row in lines.select(SOURCE_FILE).distinct().collect()]
    unsafe = unsafe_files(files, cfg.paths.events_dir)
    return parse_activity_lines(lines, cfg.stream.max_line_chars, unsafe)


def activity_stream(spark: SparkSession, cfg: Config) -> DataFrame:
    """The configured source of activity (``source.kind``), checked first where it can be."""
    if cfg.source.kind == "kafka":
        check_topic(cfg.kafka.bootstrap_servers, cfg.kafka.topic)
        return activity_messages_stream(spark, cfg)
    ensure_dir(spark, cfg.paths.events_dir)
    return activity_lines_stream(spark, cfg)


def ensure_tables(spark: SparkSession, cfg: Config) -> None:
    """Create every output table (empty) so that readers and MERGE targets exist from the start."""
    for name, schema in TABLE_SCHEMAS.items():
        ensure_delta_table(spark, cfg.paths.table(name), schema)


def format_micros(micros: int | None) -> str:
    """A UTC timestamp in microseconds since the epoch, as text (``-`` for none)."""
    if micros is None:
        return "-"
    return datetime.fromtimestamp(micros / 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _micros_literal(micros: int | None):
    # Timestamps cross the Python boundary as epoch microseconds, never as naive datetimes,
    # so the driver's local time zone cannot shift them.
    return F.timestamp_micros(F.lit(micros).cast("long"))


def _distinct_users(own: DataFrame | None, left: DataFrame | None) -> DataFrame | None:
    """The users of the batch's own changes and of the updates earlier batches left, once each."""
    if own is None or left is None:
        return own if left is None else left
    return own.unionByName(left).distinct()


@dataclass(frozen=True)
class LiveFold:
    """What a batch folds into ``LIVE_TABLES``: its own changes and the updates earlier batches
    of the run left (``lib.live_updates``), each table from the first batch it lacks."""

    batch_id: int
    sessions: DataFrame  # after this batch (SESSION_STATE_SCHEMA plus CLOSED: those it closed)
    own: BatchChanges | None  # None: the batch changed nothing
    left: DataFrame | None  # UPDATE_COLUMNS rows of left_batches
    left_batches: tuple[int, ...]
    folded: dict[str, int]  # per live table, the last batch it has folded in (-1: none)
    purchases: DataFrame
    ingested_at: Column

    def _after(self, tables: tuple[str, ...]) -> int:
        return min(self.folded[t] for t in tables)

    def own_for(self, *tables: str) -> BatchChanges | None:
        return self.own if self.own is not None and self.batch_id > self._after(tables) else None

    def left_for(self, *tables: str) -> DataFrame | None:
        after = self._after(tables)
        return updates_after(self.left, after) if any(b > after for b in self.left_batches) else None

    def changed(self, *tables: str) -> bool:
        return self.own_for(*tables) is not None or self.left_for(*tables) is not None

    def users(self, *tables: str) -> DataFrame:
        """The users whose rows in ``tables`` change (some of them: those that lack updates)."""
        own, left = self.own_for(*tables), self.left_for(*tables)
        return _distinct_users(own.touched if own else None, left.select(USER_ID) if left is not None else None)

    def ranked(self, table: str) -> DataFrame | None:
        own, left = self.own_for(table), self.left_for(table)
        return _distinct_users(
            own.ranked if own else None, left.where(F.col(RANKED)).select(USER_ID) if left is not None else None
        )

    def pool(self, table: str) -> DataFrame:
        """The sessions the latest of each user's is taken from."""
        return session_pool(self.sessions, self.left_for(table))

    def totals(self, table: str) -> DataFrame | None:
        """The profile totals ``table`` lacks, one row per user; None when it lacks none."""
        own, left = self.own_for(table), self.left_for(table)
        if left is None:
            return own.totals if own else None
        left = left.select(*TOTALS_COLUMNS)
        return sum_profile_totals(left if own is None else left.unionByName(own.totals.select(*TOTALS_COLUMNS)))


class SessionBatchWriter:
    """The ``foreachBatch`` function of the stream: ``writer(batch_df, batch_id)``.

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
        self.spark = spark
        self.cfg = cfg
        self.stats = stats or StreamStats()
        self._app_id = app_id
        self.fail_after = fail_after
        self.backlog = backlog
        self.stop_requested = threading.Event()
        # Guards stop_requested against a batch starting: a batch is either running (and the
        # stop waits for it) or saw the request (and ends without writing).
        self._batch_gate = threading.Condition()
        self._batch_running = False
        self.parked_for_stop = threading.Event()  # a batch waits in _end_for_stop
        self._maintenance = ThreadPoolExecutor(1, thread_name_prefix="maintenance")
        self._vacuum: Future | None = None
        self.store = SQLiteStore(cfg.paths.online_store)
        self._store_bound = False
        self._ranker: tuple[str, LiveRanker] | None = None  # (model version, its ranker)
        self._purchase_files: list[str] | None = None  # as of the last profile update

    @property
    def checkpoint(self) -> str:
        return self.cfg.paths.checkpoint(STREAM_CHECKPOINT)

    def app_id(self) -> str:
        """The streaming query's id, persisted in its checkpoint: stable across restarts."""
        if self._app_id is None:
            metadata = self.spark.read.text(f"{self.checkpoint}/metadata").first()[0]
            self._app_id = f"streamrec-{json.loads(metadata)['id']}"
        return self._app_id

    def state_store(self) -> SessionStateStore:
        return SessionStateStore(self.spark, self.cfg.paths.checkpoint(f"{SESSION_STATE_DIR}/{self.app_id()}"))

    def pending_store(self) -> PendingUpdatesStore:
        return PendingUpdatesStore(self.spark, self.cfg.paths.checkpoint(f"{PENDING_UPDATES_DIR}/{self.app_id()}"))

    def _live_fold(
        self,
        batch_id: int,
        sessions: DataFrame,
        own: BatchChanges | None,
        purchases: DataFrame,
        ingested_at: Column,
        keep: Callable[[DataFrame], DataFrame],
    ) -> LiveFold:
        """What batch ``batch_id`` folds into the live tables: ``own`` (None when it changed
        nothing) plus the updates earlier batches left that some table lacks."""
        sink, pending = BatchSink(self.spark, self.app_id()), self.pending_store()
        folded = {name: sink.last_committed_batch(self.cfg.paths.table(name)) for name in LIVE_TABLES}
        # A replayed batch's own updates are recomputed; finish_run (no own) reads them back.
        left_batches = [
            b
            for b in pending.batches()
            if min(folded.values()) < b and (b < batch_id or (b == batch_id and own is None))
        ]
        left = pending.read(left_batches)
        if left is not None:
            left = keep(left.select(*UPDATE_COLUMNS))
        return LiveFold(batch_id, sessions, own, left, tuple(left_batches), folded, purchases, ingested_at)

    def _write_live_sessions(self, fold: LiveFold, sink: BatchSink, keep) -> None:
        if not fold.changed(LIVE_SESSIONS):
            return
        touched = fold.users(LIVE_SESSIONS)
        live = (
            latest_session_per_user(fold.pool(LIVE_SESSIONS).join(touched, USER_ID, "left_semi"))
            .withColumn(IS_OPEN, ~F.col(CLOSED))
            .transform(with_session_metrics)
            .transform(lambda df: with_purchase_history(df, fold.purchases, as_of=SESSION_START))
            .withColumn(UPDATED_AT, fold.ingested_at)
            .select(*LIVE_SESSIONS_SCHEMA.fieldNames())
        )
        live = keep(live)
        self.store.put_sessions(fold.batch_id, user_docs(live, LIVE_SESSIONS_SCHEMA.fieldNames()))
        sink.upsert(live, self.cfg.paths.table(LIVE_SESSIONS), [USER_ID], fold.batch_id)

    def _write_user_profiles(self, fold: LiveFold, sink: BatchSink, keep) -> list[DataFrame]:
        """Fold the updates into ``user_profiles``; returns the rows of the users concerned (the
        live recommendations exclude the items they hold), or nothing when there are none."""
        if not fold.changed(USER_PROFILES, LIVE_RECOMMENDATIONS):
            return []
        lacking = fold.totals(USER_PROFILES)
        if lacking is None:
            increments = self.spark.createDataFrame([], USER_PROFILES_SCHEMA).select(*TOTALS_COLUMNS)
        else:
            increments = keep(lacking)
        # Users without new activity need a new row only when the purchase history changed
        # (new files); the first batch of a run checks them all, which also covers a restart.
        purchases = fold.purchases
        purchase_files = sorted(purchases.inputFiles())
        concerned = fold.users(USER_PROFILES, LIVE_RECOMMENDATIONS)
        if purchase_files != self._purchase_files:
            concerned = concerned.unionByName(purchases.select(USER_ID))
        concerned = concerned.distinct()
        stored = self.spark.read.format("delta").load(self.cfg.paths.table(USER_PROFILES))
        stored = stored.join(concerned, USER_ID, "left_semi")
        # with_profile_metrics has a row for every buyer; a buyer not concerned has no stored
        # totals read, and its row (purchases only) would overwrite the stored one.
        summed = add_profile_totals(stored, increments)
        rows = keep(
            with_profile_metrics(summed, purchases, self.cfg.recommend, fold.ingested_at)
            .join(concerned, USER_ID, "left_semi")
            .join(increments.select(USER_ID, F.lit(True).alias("_touched")), USER_ID, "left")
            .fillna(False, ["_touched"])
        )
        # When a crashed attempt of this batch committed the profiles, the stored rows hold the
        # updates already (none lacking): they serve the live recommendations' exclusions only.
        if lacking is not None:
            self.store.put_profiles(fold.batch_id, user_docs(rows, PROFILE_COLUMNS))
            sink.upsert(
                rows, self.cfg.paths.table(USER_PROFILES), [USER_ID], fold.batch_id, update_condition=_PROFILE_CHANGED
            )
        self._purchase_files = purchase_files
        return [rows]

    def _write_live_recommendations(self, fold: LiveFold, sink: BatchSink, profile_rows: list[DataFrame]) -> None:
        current = self.current_ranker()
        ranked = fold.ranked(LIVE_RECOMMENDATIONS)
        if ranked is None or current is None or not profile_rows:
            return
        model_version, ranker = current
        context = (
            latest_session_per_user(fold.pool(LIVE_RECOMMENDATIONS).join(ranked, USER_ID, "left_semi"))
            .transform(with_session_metrics)
            .select(USER_ID, SESSION_ID, RECENT_EVENTS)
        )
        seen = profile_rows[0].select(USER_ID, F.explode(F.map_keys(ITEM_ENGAGEMENT)).alias(ITEM_ID))
        excluded = live_exclusions(context, fold.purchases, seen, self.cfg.recommend)
        # Materialized without their lineage: the MERGE reads its source twice, and neither
        # read may re-plan or recompute the session lineage or the re-ranking.
        context = context.localCheckpoint()
        recs = ranker.recommend(context, excluded, model_version, fold.ingested_at).localCheckpoint()
        self.store.put_live_recommendations(fold.batch_id, recommendation_docs(recs))
        # Every rank slot of a re-ranked user: a slot without a new row is deleted.
        slots = context.select(USER_ID).crossJoin(
            self.spark.range(1, self.cfg.recommend.top_k + 1).select(F.col("id").cast("int").alias(RANK))
        )
        sink.upsert(
            slots.join(recs, [USER_ID, RANK], "left"),
            self.cfg.paths.table(LIVE_RECOMMENDATIONS),
            [USER_ID, RANK],
            fold.batch_id,
            delete_condition=f"s.{ITEM_ID} IS NULL",
            insert_condition=f"s.{ITEM_ID} IS NOT NULL",
        )

    def finish_run(self) -> None:
        """After an availableNow run ended on its own: fold the updates its batches left, should
        its last batch have left them (``lib.backlog`` counts waiting files conservatively, so
        this is a safety net, not the rule)."""
        pending, state_store = self.pending_store(), self.state_store()
        left, states = pending.batches(), state_store.batches()
        if not left or not states:
            return
        last = states[-1]
        log.warning("batches %s left live updates no later batch folded; folding them as batch %d", left, last)
        self.bind_store()
        cached: list[DataFrame] = []

        def keep(df: DataFrame) -> DataFrame:
            cached.append(df.persist())
            return df

        try:
            purchases = keep(read_purchases(self.spark, self.cfg.paths.purchases))
            ingested_at = _micros_literal(int(time.time() * 1_000_000))
            sessions = keep(state_store.read_before(last + 1).withColumn(CLOSED, F.lit(False)))
            fold = self._live_fold(last, sessions, None, purchases, ingested_at, keep)
            sink = BatchSink(self.spark, self.app_id())
            self._write_live_sessions(fold, sink, keep)
            self._write_live_recommendations(fold, sink, self._write_user_profiles(fold, sink, keep))
            pending.delete_through(last)
        finally:
            for df in cached:
                df.unpersist()

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

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        with self._batch_gate:
            stopping = self.stop_requested.is_set()
            self._batch_running = not stopping
        if stopping:
            self._end_for_stop(batch_id)
        started = time.monotonic()
        started_at = int(time.time() * 1_000_000)
        report = BatchReport(batch_id)
        cached: list[DataFrame] = []
        try:
            self._process(batch_df, batch_id, started_at, report, cached)
        finally:
            for df in cached:
                df.unpersist()
            with self._batch_gate:
                self._batch_running = False
                self._batch_gate.notify_all()
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

    def request_stop(self) -> None:
        """From now on a starting batch writes nothing (see ``_end_for_stop``)."""
        with self._batch_gate:
            self.stop_requested.set()

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Wait for the running batch, if any, to return; True when none runs."""
        with self._batch_gate:
            return self._batch_gate.wait_for(lambda: not self._batch_running, timeout_s)

    def _end_for_stop(self, batch_id: int) -> None:
        """Wait, writing nothing, for ``query.stop()`` to interrupt this (the stream execution)
        thread, then end the batch as interrupted: it is planned again, whole, on the next start.
        Python's calls into the JVM from ``foreachBatch`` run on that thread, so a sleep there
        is where the interrupt arrives."""
        self.parked_for_stop.set()
        try:
            while True:
                self.spark._jvm.java.lang.Thread.sleep(100)
        except Exception:  # the InterruptedException, through Py4J
            raise StopRequested(StopRequested.MESSAGE.format(batch_id=batch_id)) from None

    def _process(self, batch_df, batch_id, started_at, report: BatchReport, cached: list[DataFrame]) -> None:
        spark, cfg = self.spark, self.cfg
        gap_s = cfg.sessions.gap_seconds
        delay_micros = micros(cfg.sessions.watermark_seconds)
        sink, table = BatchSink(spark, self.app_id()), cfg.paths.table
        ingested_at = _micros_literal(started_at)
        state_store = self.state_store()
        self.bind_store()

        def keep(df: DataFrame) -> DataFrame:
            cached.append(df.persist())
            return df

        with report.stage("parse"):
            parsed = keep(parse_batch(batch_df, cfg, keep))
            state = keep(state_store.read_before(batch_id))
            previous_max_end = state.agg(F.max(F.unix_micros(SESSION_END))).first()[0]
            watermark_before = None if previous_max_end is None else previous_max_end - delay_micros
            late = F.unix_micros(EVENT_TS) < F.lit(watermark_before) if watermark_before is not None else F.lit(False)
            valid = F.col("reason").isNull()
            counts = parsed.agg(
                F.count(F.lit(1)).alias("rows"),
                F.count(F.when(valid, 1)).alias("valid"),
                F.count(F.when(valid & late, 1)).alias("late"),
                F.max(F.when(valid & ~late, F.unix_micros(EVENT_TS))).alias("max_on_time"),
            ).first()
            report.input_lines = counts["rows"]
            report.valid_rows = counts["valid"]
            report.quarantined_rows = counts["rows"] - counts["valid"]
            report.late_rows_dropped = counts["late"]
            events = valid_events(parsed)
            purchases = keep(read_purchases(spark, cfg.paths.purchases))

        def write_enriched():
            if report.valid_rows:
                enriched = with_purchase_history(events, purchases, as_of=EVENT_TS).withColumn(INGESTED_AT, ingested_at)
                sink.append(enriched.select(*ENRICHED_EVENTS_SCHEMA.fieldNames()), table(ENRICHED_EVENTS), batch_id)

        def write_quarantine():
            if report.quarantined_rows:
                sink.append(quarantine_rows(parsed, ingested_at), table(QUARANTINE), batch_id)

        def write_session_features():
            if report.sessions_closed:
                closed = (
                    sessions.where(CLOSED)
                    .transform(with_session_metrics)
                    .transform(lambda df: with_purchase_history(df, purchases, as_of=SESSION_START))
                )
                sink.append(closed.select(*SESSION_FEATURES_SCHEMA.fieldNames()), table(SESSION_FEATURES), batch_id)

        def write_item_popularity():
            if report.valid_rows:
                engagement = events.groupBy(ITEM_ID).agg(F.sum(event_weight(cfg.recommend)).alias("engagement"))
                self.store.add_item_engagement(batch_id, [(r[0], r[1]) for r in engagement.collect()])

        def write_state():
            state_store.write(sessions.where(~F.col(CLOSED)).select(*SESSION_STATE_SCHEMA.fieldNames()), batch_id)

        def run(*writes) -> None:
            for name, write in writes:
                with report.stage(name):
                    write()
                if name == self.fail_after:
                    raise InjectedFault(f"fault injected after the {name} write of batch {batch_id}")

        # Each write is exactly-once on its own (sinks skip what a crashed attempt committed;
        # the state is per batch), so neither their order nor a crash between them matters.
        # The events and the quarantine go first: they need no session state.
        run(("enriched", write_enriched), ("quarantine", write_quarantine))
        with report.stage("sessionize"):
            max_end = max((t for t in (previous_max_end, counts["max_on_time"]) if t is not None), default=None)
            report.watermark_micros = None if max_end is None else max_end - delay_micros
            fragments = event_fragments(events.where(~late)).unionByName(state)
            sessions = keep(
                merge_sessions(fragments, gap_s).withColumn(CLOSED, is_closed(report.watermark_micros, gap_s))
            )
            outcome = sessions.agg(
                F.count(F.when(F.col(CLOSED), 1)).alias("closed"),
                F.count(F.when(~F.col(CLOSED), 1)).alias("open"),
            ).first()
            report.sessions_closed, report.open_sessions = outcome["closed"], outcome["open"]
        has_updates = bool(report.valid_rows or report.sessions_closed)
        changes = batch_changes(events, sessions, cfg.recommend, has_events=bool(report.valid_rows))
        pending = self.pending_store()
        report.input_waiting = self.backlog.waiting_after(batch_id) if self.backlog is not None else 0
        if report.input_waiting:
            # More of the backlog waits: the live tables need only the state after its last batch.
            updates = live_updates(changes, sessions, batch_id)
            live_chains = ((("pending_updates", lambda: pending.write(updates, batch_id)),),)
        else:
            own = changes if has_updates else None
            fold = self._live_fold(batch_id, sessions, own, purchases, ingested_at, keep)
            profile_rows: list[DataFrame] = []
            live_chains = (
                (("live_sessions", lambda: self._write_live_sessions(fold, sink, keep)),),
                (
                    ("user_profiles", lambda: profile_rows.extend(self._write_user_profiles(fold, sink, keep))),
                    ("live_recommendations", lambda: self._write_live_recommendations(fold, sink, profile_rows)),
                ),
            )
        # The rest run side by side: a micro-batch's time is mostly planning and Delta's
        # bookkeeping on the driver, not work on the executors' cores.
        chains = (
            (*live_chains[0], ("item_popularity", write_item_popularity)),
            *live_chains[1:],
            (("session_features", write_session_features), ("state", write_state)),
        )
        with ThreadPoolExecutor(len(chains), thread_name_prefix=f"batch-{batch_id}") as pool:
            outcomes = [pool.submit(run, *chain) for chain in chains]
        failures = [f.exception() for f in outcomes if f.exception() is not None]
        if failures:
            raise failures[0]
        if not report.input_waiting:
            pending.delete_through(batch_id)
        if due(batch_id, cfg.stream.compact_every):
            with report.stage("compact"):
                to_compact = table_to_compact({name: data_files(spark, table(name)) for name in COMPACTED_TABLES})
                if to_compact:
                    compact(spark, table(to_compact))
        if due(batch_id, cfg.lake.vacuum_every):
            self._start_vacuum()
        with report.stage("metrics"):
            report.duration_s = time.time() - started_at / 1_000_000
            sink.append(_metrics_row(spark, report, started_at), table(STREAM_METRICS), batch_id)
        self.store.finish_batch(batch_id, datetime.now(timezone.utc))


def _metrics_row(spark: SparkSession, report: BatchReport, started_at: int) -> DataFrame:
    rows_per_s = report.input_lines / report.duration_s if report.duration_s > 0 else None
    return spark.range(1).select(
        F.lit(report.batch_id).cast("long").alias("batch_id"),
        _micros_literal(started_at).alias("started_at"),
        F.lit(report.input_lines).cast("long").alias("input_lines"),
        F.lit(report.valid_rows).cast("long").alias("valid_rows"),
        F.lit(report.quarantined_rows).cast("long").alias("quarantined_rows"),
        F.lit(report.late_rows_dropped).cast("long").alias("late_rows_dropped"),
        F.lit(report.sessions_closed).cast("long").alias("sessions_closed"),
        F.lit(report.open_sessions).cast("long").alias("open_sessions"),
        _micros_literal(report.watermark_micros).alias("watermark"),
        F.lit(report.duration_s).cast("double").alias("duration_s"),
        F.lit(rows_per_s).cast("double").alias("rows_per_s"),
    )


class ProgressLogger(StreamingQueryListener):
    """Logs one line per micro-batch: id, input rows, rows/s, duration, watermark, late drops."""

    def __init__(self, stats: StreamStats):
        self.stats = stats
        self.terminated = threading.Event()

    def onQueryStarted(self, event) -> None:
        log.info("stream %s started (id %s)", event.name, event.id)

    def onQueryProgress(self, event) -> None:
        progress = event.progress
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
        self.terminated.set()


@dataclass
class StreamHandle:
    """A running activity stream: the query, its batch writer and its progress listener."""

    spark: SparkSession
    query: StreamingQuery
    writer: SessionBatchWriter
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
        if not self.writer.wait_until_idle(timeout_s):
            log.warning("the running micro-batch did not finish within %.0f s; interrupting it", timeout_s)
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
        """Wait for the query to end; True if it ended. Raises if it failed (not on a requested stop)."""
        try:
            if timeout_s is None:
                self.query.awaitTermination()
                return True
            return bool(self.query.awaitTermination(timeout_s))
        except StreamingQueryException as exc:
            if self.writer.stop_requested.is_set() and "StopRequested" in str(exc):
                return True
            raise

    def finish_run(self) -> None:
        """After an availableNow run ended on its own (see ``SessionBatchWriter.finish_run``)."""
        self.writer.finish_run()

    def close(self, drain_timeout_s: float = 10.0) -> None:
        """Release the checkpoint and unregister the listener once it logged the last events."""
        if self.query.isActive:
            self.query.stop()
        self.writer.close()
        self.lock.release()
        self.listener.terminated.wait(drain_timeout_s)
        self.spark.streams.removeListener(self.listener)


def start_stream(
    spark: SparkSession, cfg: Config, available_now: bool = False, stats: StreamStats | None = None
) -> StreamHandle:
    """Take the checkpoint, create the tables, then start the activity stream.

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
        source = activity_stream(spark, cfg)
        stats = stats or StreamStats()
        backlog = _backlog(spark, cfg, checkpoint) if available_now and cfg.stream.defer_live_in_backlog else None
        batch_writer = SessionBatchWriter(spark, cfg, stats, backlog=backlog)
        writer = (
            source.writeStream.queryName(QUERY_NAME).foreachBatch(batch_writer).option("checkpointLocation", checkpoint)
        )
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{cfg.stream.trigger_interval_seconds} seconds")
        listener = ProgressLogger(stats)
        spark.streams.addListener(listener)
        return StreamHandle(spark, writer.start(), batch_writer, listener, lock)
    except BaseException:
        lock.release()
        raise


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
