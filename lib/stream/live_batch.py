"""The main query's micro-batch: cheap, and the online store first.

One Spark job takes the batch's input to the driver as Arrow (the raw lines of the watched
folder or the Kafka messages, parsed there by ``lib.ingest.line_parsing``); the
rest runs on the driver with numpy and pandas, beside at most two Delta appends:

1. the point-in-time purchases (``lib.ingest.purchase_index``, rebuilt when the history's files
   change);
2. the live fold (``lib.features.live_fold``) against the users' open sessions held in the store,
   and one store transaction (``lib.serve.live_state``) that records the batch id with everything
   it changes (the sessions served from then on, and each user's re-ranking context), so a
   replayed batch changes nothing there;
3. ``enriched_events`` and, when the batch has bad rows, ``quarantine``, appended with the
   exactly-once commit markers of ``lib.lake.sinks``. While a backlog drains (``defer_ranking``)
   the appends run beside the fold.

The live re-ranking (``lib.recommend.live.DriverRanker``) runs beside the batches, in a thread of
its own started with the first batch: it takes every user the batches queued in the store since
it last ran and writes their recommendations in one store transaction, so a batch never waits for
it and a slow ranking covers several batches at once; it then checkpoints the store's write-ahead
log, which the batches' commits leave to it. While a backlog drains it waits for the end.

The Delta tables that need more than appends (``session_features``, ``user_profiles``, the
mirrors of the live tables, ``stream_metrics``) are folded on a slow cadence from what each batch
leaves in the store (``lib.stream.slow``).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lib.core.config import STREAM_CHECKPOINT, Config, micros
from lib.core.schemas import (
    ENRICHED_EVENTS,
    ENRICHED_EVENTS_SCHEMA,
    EVENT_TS,
    FIRST_SEEN,
    GENERATED_AT,
    INGESTED_AT,
    IS_OPEN,
    ITEM_ENGAGEMENT,
    ITEM_ID,
    LAST_SEEN,
    LIVE_RECOMMENDATIONS,
    MODEL_VERSION,
    PROFILE_COLUMNS,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    SESSION_FEATURES_SCHEMA,
    SESSION_ID,
    SESSION_START,
    SOURCE_FILE,
    STREAM_METRICS_SCHEMA,
    USER_ID,
    USER_PROFILES,
)
from lib.features.interactions import event_weight
from lib.features.live_fold import EVENT_COLUMNS, FoldedBatch, fold_events, session_ids, typed
from lib.features.profiles import COUNTS, WEIGHT, profile_documents, profile_increments
from lib.ingest.line_parsing import parse_lines, parse_messages, raw_lines_to_arrow, rejected_rows, valid_rows
from lib.ingest.purchase_index import PurchaseHistory, PurchaseIndex
from lib.ingest.sources import unsafe_files
from lib.lake.sinks import BatchSink, driver_rows
from lib.recommend.live import DriverRanker
from lib.recommend.model_store import ModelStore
from lib.serve.live_state import RANKING_COLUMNS, BatchChanges, LiveState, session_documents, session_rows
from lib.serve.online_sink import iso_text, recommendation_documents
from lib.serve.online_store import iso_utc
from lib.stream.gate import GatedBatchWriter

log = logging.getLogger(__name__)

_UTC_MICROS = pa.timestamp("us", tz="UTC")
KILL_AFTER_ENV = "STREAMREC_KILL_AFTER"
_BATCH_PROPERTIES = ("spark.job.description", "spark.jobGroup.id", "spark.scheduler.pool")


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
    duration_s: float = 0.0
    replayed: bool = False
    stage_s: dict[str, float] = field(default_factory=dict)
    spark_jobs: int | None = None
    delta_commits: int = 0

    @contextmanager
    def stage(self, name: str):
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

    def metrics_row(self, started_at_micros: int) -> pa.Table:
        """The batch's ``stream_metrics`` row."""
        rows_per_s = self.input_lines / self.duration_s if self.duration_s > 0 else None
        values = {
            "batch_id": pa.array([self.batch_id], pa.int64()),
            "started_at": pa.array([started_at_micros], _UTC_MICROS),
            "input_lines": pa.array([self.input_lines], pa.int64()),
            "valid_rows": pa.array([self.valid_rows], pa.int64()),
            "quarantined_rows": pa.array([self.quarantined_rows], pa.int64()),
            "late_rows_dropped": pa.array([self.late_rows_dropped], pa.int64()),
            "sessions_closed": pa.array([self.sessions_closed], pa.int64()),
            "open_sessions": pa.array([self.open_sessions], pa.int64()),
            "watermark": pa.array([self.watermark_micros], _UTC_MICROS),
            "duration_s": pa.array([self.duration_s], pa.float64()),
            "rows_per_s": pa.array([rows_per_s], pa.float64()),
            "stage_s": pa.array([list(self.stage_s.items())], pa.map_(pa.string(), pa.float64())),
            "spark_jobs": pa.array([self.spark_jobs], pa.int64()),
            "delta_commits": pa.array([self.delta_commits], pa.int64()),
        }
        return pa.table({name: values[name] for name in STREAM_METRICS_SCHEMA.fieldNames()})


def format_micros(timestamp_micros: int | None) -> str:
    """A UTC timestamp in microseconds since the epoch, as text (``-`` for none)."""
    if timestamp_micros is None:
        return "-"
    return datetime.fromtimestamp(timestamp_micros / 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


class LiveBatchWriter(GatedBatchWriter):
    """The ``foreachBatch`` function of the main query: ``writer(batch_df, batch_id)``."""

    def __init__(
        self,
        spark: SparkSession,
        cfg: Config,
        stats=None,
        app_id: str | None = None,
        fail_after: str | None = None,
    ):
        """:param stats: a ``lib.stream.query.StreamStats`` the reports go to.
        :param fail_after: fault injection for crash tests (off by default): raise ``InjectedFault``
            right after the named write ("store" or "enriched")."""
        super().__init__(spark, cfg.paths.checkpoint(STREAM_CHECKPOINT), app_id)
        self.cfg = cfg
        self.stats = stats
        self.fail_after = fail_after
        self.state = LiveState(cfg.paths.online_store)
        self.purchases = PurchaseHistory(spark, cfg.paths.purchases, cfg.recommend.purchase_weight)
        self.gap = micros(cfg.sessions.gap_seconds)
        self.delay = micros(cfg.sessions.watermark_seconds)
        self._store_bound = False
        # Draining a backlog (``--available-now``): only the live state after its last batch
        # matters, so the batches keep their users' re-ranking context in the store and
        # ``rank_pending`` ranks them once at the end.
        self.defer_ranking = False
        self._ranker: tuple[str, DriverRanker] | None = None
        self._model_lock, self._ranking_lock = threading.Lock(), threading.Lock()
        self._ranking_wanted, self._ranking_stopped = threading.Event(), threading.Event()
        self._ranking_thread: threading.Thread | None = None

    def bind_store(self, batch_id: int) -> None:
        """Tie the online store to this stream once (a store of a former stream is reset), and
        rebuild its live state when it is behind the checkpoint (deleted, or restored from an
        older copy): batch ``batch_id`` must find the state of every batch before it."""
        if self._store_bound:
            return
        self.state.bind(self.app_id())
        applied = self.state.last_applied_batch()
        if applied < batch_id - 1:
            self._rebuild_state(applied, batch_id - 1)
        self._store_bound = True
        # The model's load (Spark reads of its parts, then its arrays: about 10 s) runs beside the
        # first batches rather than inside the first ranking.
        threading.Thread(target=self._load_model, name="model-load", daemon=True).start()

    def _load_model(self) -> None:
        try:
            self.current_ranker()
        except Exception:  # the ranking loads it again, and says why it cannot
            if not self.stop_requested.is_set():
                log.exception("loading the recommendation model failed")

    def _rebuild_state(self, applied: int, through: int) -> None:
        """The open sessions from ``enriched_events``'s last ``sessions.gap + sessions.watermark``
        of event time, folded as batch ``through``. Sessions that closed before are in
        ``session_features`` already and are not emitted again; events the stream had dropped as
        late may now count in the sessions they fall in."""
        events = self.spark.read.format("delta").load(self.cfg.paths.table(ENRICHED_EVENTS))
        latest = events.agg(F.max(F.unix_micros(EVENT_TS))).first()[0]
        rows = pd.DataFrame(columns=list(EVENT_COLUMNS))
        if latest is not None:
            window = events.where(F.unix_micros(EVENT_TS) >= F.lit(latest - self.gap - self.delay))
            rows = window.select(USER_ID, ITEM_ID, "event_type", F.unix_micros(EVENT_TS).alias(EVENT_TS), "source_file")
            rows = rows.toPandas()
            rows["file_block_start"], rows["line_id"] = 0, np.arange(len(rows))
        self.state.forget_live()
        empty_sessions, empty_recent, _ = self.state.read_open([])
        folded = fold_events(empty_sessions, empty_recent, rows, self.gap, None, self.delay)
        index = self.purchases.current()
        last = folded.latest_per_user()
        past, avg = index.as_of(last[USER_ID].to_numpy(np.int64), last[SESSION_START].to_numpy(np.int64))
        rebuilt_at = micros(time.time())
        docs = session_documents(last, past, _nullable(avg), rebuilt_at)
        # What else lived only in the store comes back from the Delta side: the profiles (and the
        # items each user interacted with), the live recommendations, the items' popularity.
        profiles = self.spark.read.format("delta").load(self.cfg.paths.table(USER_PROFILES))
        totals = profiles.select(
            USER_ID, *COUNTS, *(F.unix_micros(c).alias(c) for c in (FIRST_SEEN, LAST_SEEN))
        ).toPandas()
        engagement = profiles.select(USER_ID, F.explode(ITEM_ENGAGEMENT).alias(ITEM_ID, WEIGHT)).toPandas()
        self.state.load_profile_totals(totals.astype({FIRST_SEEN: "Int64", LAST_SEEN: "Int64"}), engagement)
        weight = event_weight(self.cfg.recommend)
        popularity = events.groupBy(ITEM_ID).agg(F.sum(weight).alias("engagement")).toPandas()
        changes = BatchChanges(
            session_docs=docs,
            engagement=[(int(i), float(w)) for i, w in popularity.itertuples(index=False, name=None)],
            updated_at_micros=rebuilt_at,
        )
        self.state.store.put_profiles(through, profile_documents(profiles.select(*PROFILE_COLUMNS).toArrow()))
        live = self.spark.read.format("delta").load(self.cfg.paths.table(LIVE_RECOMMENDATIONS))
        self.state.store.put_live_recommendations(through, recommendation_documents(live.toArrow().to_pandas()))
        self.state.apply(through, folded, changes, self.gap)
        log.warning(
            "the online store %s had the live state of batch %d, the checkpoint is at batch %d: rebuilt it from "
            "%d events of enriched_events (%d open sessions)",
            self.cfg.paths.online_store,
            applied,
            through,
            len(rows),
            int(folded.sessions[IS_OPEN].sum()),
        )

    def current_ranker(self) -> tuple[str, DriverRanker] | None:
        """The latest committed model's version and ranker, loaded again when ``jobs/train.py``
        commits a new one."""
        store = ModelStore.for_config(self.spark, self.cfg)
        latest = store.latest_version()
        with self._model_lock:  # the model-load thread and the live ranking ask
            if latest is not None and (self._ranker is None or self._ranker[0] != latest):
                self._ranker = (latest, DriverRanker.from_model(store.load(latest), self.cfg.recommend))
                log.info("live recommendations now use model %s", latest)
            return self._ranker

    def parse(self, batch_df: DataFrame) -> pa.Table:
        """The batch's rows on the driver (``PARSED_COLUMNS``), in one Spark job."""
        if self.cfg.source.kind == "kafka":
            return parse_messages(raw_lines_to_arrow(batch_df), self.cfg.stream.max_line_chars)
        lines = raw_lines_to_arrow(batch_df)
        files = lines.column("source_file").unique().to_pylist()
        return parse_lines(lines, self.cfg.stream.max_line_chars, unsafe_files(files, self.cfg.paths.events_dir))

    def write_batch(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        started_at = micros(time.time())
        report = BatchReport(batch_id)
        tracker = self.spark.sparkContext.statusTracker()
        group = self.spark.sparkContext.getLocalProperty("spark.jobGroup.id")
        jobs_before = set(tracker.getJobIdsForGroup(group))
        self.bind_store(batch_id)
        with report.stage("parse"):
            parsed = self.parse(batch_df)
            valid, bad = valid_rows(parsed), rejected_rows(parsed)
        report.input_lines = parsed.num_rows
        report.valid_rows, report.quarantined_rows = valid.num_rows, bad.num_rows
        with ThreadPoolExecutor(2, thread_name_prefix=f"batch-{batch_id}-append") as pool:
            with report.stage("fold"):
                index = self.purchases.current()
                events = valid.select(list(EVENT_COLUMNS)).to_pandas()
                events[EVENT_TS] = valid.column(EVENT_TS).cast(pa.int64()).to_numpy()
                past, avg = index.as_of(events[USER_ID].to_numpy(np.int64), events[EVENT_TS].to_numpy(np.int64))
                # While a backlog drains nobody waits on the store: the appends, which need no
                # fold, run beside it (each write is exactly once on its own, in any order);
                # otherwise they start once the store has the batch.
                appends = self._appends(batch_id, valid, past, avg, bad, started_at)
                running = [pool.submit(append) for append in appends] if self.defer_ranking else None
                # A batch replayed after a crash that the store has applied already is not folded
                # again (its state moved on): its appends are redone, its counts read back.
                report.replayed = self.state.last_applied_batch() >= batch_id
                if not report.replayed:
                    changes, folded = self._changes(events, index, started_at)
            with report.stage("store"):
                if not report.replayed:
                    self.state.apply(batch_id, folded, changes, self.gap)
            landed = landed_at(parsed.column(SOURCE_FILE).unique().to_pylist())
            store_delay_s = None if landed is None or report.replayed else time.time() - landed
            self._maybe_fail("store", batch_id)
            if running is None:
                running = [pool.submit(append) for append in appends]
            if not self.defer_ranking:
                self._rank_beside()  # the sessions are served; their recommendations follow
            outcome = self.state.applied_outcome(batch_id) if report.replayed else changes.outcome
            for name, value in (outcome or {}).items():
                setattr(report, name, value)
            with report.stage("delta"):
                for done in running:
                    report.delta_commits += done.result()
        self._maybe_fail("enriched", batch_id)
        report.spark_jobs = len(set(tracker.getJobIdsForGroup(group)) - jobs_before)
        report.duration_s = time.monotonic() - started
        finished = datetime.now(timezone.utc)
        recent = {
            "batch_id": batch_id,
            "finished_at": finished.timestamp(),
            "input_rows": report.input_lines,
            "valid_rows": report.valid_rows,
            "quarantined_rows": report.quarantined_rows,
            "late_rows": report.late_rows_dropped,
            "duration_s": report.duration_s,
            "store_delay_s": store_delay_s,
        }
        self.state.record_report(batch_id, report.metrics_row(started_at), iso_utc(finished), recent)
        if self.stats is not None:
            self.stats.record(report)

    def _maybe_fail(self, name: str, batch_id: int) -> None:
        """The crash tests' fault injection (off by default): ``fail_after`` raises after the
        named write; ``STREAMREC_KILL_AFTER=<write>:<batch id>`` kills the driver there (kill -9),
        as a crash between the store's transaction and the Delta appends would."""
        if name == self.fail_after:
            raise InjectedFault(f"fault injected after the {name} write of batch {batch_id}")
        if os.environ.get(KILL_AFTER_ENV) == f"{name}:{batch_id}":
            log.warning("%s: killing the driver after the %s write of batch %d", KILL_AFTER_ENV, name, batch_id)
            os.kill(os.getpid(), signal.SIGKILL)

    def _changes(self, events: pd.DataFrame, index: PurchaseIndex, now_micros: int) -> tuple[BatchChanges, FoldedBatch]:
        """Fold the batch's valid rows (``events``, times in micros): what it changes in the
        store, and the fold."""
        users = events[USER_ID].to_numpy(np.int64)
        open_sessions, open_recent, max_event = self.state.read_open(pd.unique(users))
        folded = fold_events(open_sessions, open_recent, events, self.gap, max_event, self.delay)
        touched = pd.unique(folded.sessions[USER_ID])
        closing = self.state.closing(folded.watermark_micros, self.gap, touched).assign(**{IS_OPEN: False})
        closed = typed(pd.concat([folded.sessions[~folded.sessions[IS_OPEN]], closing], ignore_index=True))
        latest = folded.latest_per_user()
        s_past, s_avg = index.as_of(latest[USER_ID].to_numpy(np.int64), latest[SESSION_START].to_numpy(np.int64))
        c_past, c_avg = index.as_of(closed[USER_ID].to_numpy(np.int64), closed[SESSION_START].to_numpy(np.int64))
        totals, user_engagement = profile_increments(events, closed, self.cfg.recommend.event_weights)
        popularity = user_engagement.groupby(ITEM_ID)[WEIGHT].sum()
        changes = BatchChanges(
            session_docs=session_documents(latest, s_past, _nullable(s_avg), now_micros),
            ranking=self._ranking_context(folded, latest),
            closed_sessions=_session_features(closed, c_past, c_avg) if len(closed) else None,
            profile_totals=totals,
            user_engagement=user_engagement,
            engagement=[(int(i), float(w)) for i, w in popularity.items()],
            updated_at_micros=now_micros,
            outcome={
                "late_rows_dropped": folded.late_rows,
                "watermark_micros": folded.watermark_micros,
                "sessions_closed": len(closed),
                "open_sessions": int(folded.sessions[IS_OPEN].sum()),
            },
        )
        return changes, folded

    def _ranking_context(self, folded: FoldedBatch, latest: pd.DataFrame) -> pd.DataFrame | None:
        """What the live re-ranking of the users with on-time events needs (``RANKING_COLUMNS``):
        the latest events of their latest session; None without a model (the ranking loads it)."""
        if ModelStore.for_config(self.spark, self.cfg).latest_version() is None:
            return None
        context = latest[[USER_ID, SESSION_START]].assign(**{SESSION_ID: session_ids(latest)})
        return folded.recent.merge(context, on=[USER_ID, SESSION_START])[list(RANKING_COLUMNS)]

    def _rank_beside(self) -> None:
        """Wake the ranking thread (started with the first batch, once the store is bound to this
        stream), which ranks the users queued so far, a former run's leftovers too."""
        if self._ranking_thread is None and not self._ranking_stopped.is_set():
            self.state.leave_wal_checkpoints()  # the ranking thread does them, off the batches' path
            self._ranking_thread = threading.Thread(target=self._ranking_loop, name="live-ranking", daemon=True)
            self._ranking_thread.start()
        self._ranking_wanted.set()

    def stop_ranking(self, timeout_s: float = 60.0) -> None:
        """Stop the ranking thread once it ranked the users queued so far (call it once the
        batches stopped); users it could not rank stay queued in the store for the next run."""
        self._ranking_stopped.set()
        self._ranking_wanted.set()
        if self._ranking_thread is not None:
            self._ranking_thread.join(timeout_s)

    def _ranking_loop(self) -> None:
        while True:
            self._ranking_wanted.wait()
            self._ranking_wanted.clear()
            try:
                self.rank_pending()
            except Exception:  # the users stay queued: the next batch's wake-up retries them
                log.exception("the live ranking failed; it tries again after the next batch")
            try:  # whatever the ranking did: the batches' commits leave the checkpoint to this thread
                self.state.checkpoint_wal()
            except Exception:
                log.exception("the online store's write-ahead log checkpoint failed; it is tried after the next batch")
            if self._ranking_stopped.is_set():
                return

    def rank_pending(self) -> int:
        """The live recommendations of every user queued in the store, as of the last batch applied
        (their generated_at is that batch's sessions' updated_at); returns how many. The ranking
        thread calls it after each batch; after a backlog (``defer_ranking``) the run calls it once."""
        with self._ranking_lock:
            work = self.state.pending_ranking()
            model = self.current_ranker() if not work.rows.empty else None
            if model is None:
                return 0
            began = time.monotonic()
            as_of = micros(time.time()) if work.updated_at_micros is None else work.updated_at_micros
            # The batches keep the purchase history current; its files are not listed again here.
            docs = self._recommendations(model, work.rows, self.purchases.current(refresh=False), as_of)
            self.state.rank_pending(work.batch_id, docs)
            log.info(
                "ranked the live recommendations of %d users through batch %d in %.2f s",
                len(docs),
                work.batch_id,
                time.monotonic() - began,
            )
            return len(docs)

    def _recommendations(
        self, model: tuple[str, DriverRanker], rows: pd.DataFrame, index: PurchaseIndex, now_micros: int
    ) -> list[tuple[int, str]]:
        """Live recommendation documents of the users of ``rows`` (``RANKING_COLUMNS``: each user's
        latest session's latest events, oldest first), by ``model`` (``current_ranker``)."""
        version, ranker = model
        context = rows[[USER_ID, SESSION_ID]].drop_duplicates(USER_ID)
        users = context[USER_ID].to_numpy(np.int64)
        owners, bought = index.items_of(users)
        excluded = [pd.DataFrame({USER_ID: owners, ITEM_ID: bought})]
        if self.cfg.recommend.exclude_seen:
            interacted = self.state.seen_items(users)
            if self.cfg.recommend.live_repeats:
                in_session = rows[[USER_ID, ITEM_ID]].drop_duplicates().assign(_in=True)
                interacted = interacted.merge(in_session, on=[USER_ID, ITEM_ID], how="left")
                interacted = interacted[interacted["_in"].isna()][[USER_ID, ITEM_ID]]
            excluded.append(interacted)
        ranked = ranker.rank(context, rows, pd.concat(excluded, ignore_index=True).astype(np.int64))
        # The sessions' updated_at of the batch ranked through, as the same text (make sessions and
        # the bench compare the two).
        generated_at = iso_text(pd.Series([now_micros]))[0]
        return recommendation_documents(ranked.assign(**{MODEL_VERSION: version, GENERATED_AT: generated_at}))

    def _appends(
        self, batch_id: int, valid: pa.Table, past: np.ndarray, avg: np.ndarray, bad: pa.Table, now_micros: int
    ) -> list[Callable[[], bool]]:
        """The appends of ``enriched_events`` and (when the batch has bad rows) ``quarantine``, to
        run side by side (most of a commit's time is the driver's) in threads of their own; each
        returns whether it committed (a replayed batch's may have)."""
        appends = []
        if valid.num_rows:
            enriched = (
                valid.select(["user_id", "item_id", "event_type", "event_ts", "source_file"])
                .append_column("avg_purchase_amount", pa.array(_nullable(avg), pa.float64()))
                .append_column("past_purchases", pa.array(past, pa.int64()))
                .append_column(INGESTED_AT, pa.array([now_micros] * valid.num_rows, _UTC_MICROS))
            )
            appends.append(
                (enriched.select(ENRICHED_EVENTS_SCHEMA.fieldNames()), ENRICHED_EVENTS_SCHEMA, ENRICHED_EVENTS)
            )
        if bad.num_rows:
            quarantine = pa.table(
                {
                    "source_file": bad.column("source_file"),
                    "raw": bad.column("value"),
                    "reason": bad.column("reason"),
                    INGESTED_AT: pa.array([now_micros] * bad.num_rows, _UTC_MICROS),
                    "rejected_lines": bad.column("rejected_lines"),
                }
            )
            appends.append((quarantine, QUARANTINE_SCHEMA, QUARANTINE))
        sink = BatchSink(self.spark, self.app_id())
        context = self.spark.sparkContext
        # The threads' jobs belong to the batch: its description and job group (local properties
        # are per thread).
        inherited = {key: context.getLocalProperty(key) for key in _BATCH_PROPERTIES}

        def append(rows: pa.Table, schema, table: str) -> bool:
            for key, value in inherited.items():
                context.setLocalProperty(key, value)
            return sink.append(driver_rows(self.spark, rows, schema), self.cfg.paths.table(table), batch_id)

        return [functools.partial(append, *a) for a in appends]


def landed_at(files: list[str]) -> float | None:
    """When the oldest of a batch's local input files landed (its modification time: files are
    renamed into the folder whole), in epoch seconds; None for other sources (Kafka, HDFS)."""
    times = []
    for file in files:
        location = urlparse(file)
        if location.scheme in ("", "file"):
            try:
                times.append(os.stat(unquote(location.path)).st_mtime)
            except OSError:
                continue
    return min(times) if times else None


def _nullable(values: np.ndarray) -> list:
    """Floats with NaN as None (a null in Arrow and JSON)."""
    return [None if np.isnan(v) else float(v) for v in values]


def _session_features(closed: pd.DataFrame, past: np.ndarray, avg: np.ndarray) -> pa.Table:
    """``session_features`` rows of closed sessions, as Arrow."""
    rows = session_rows(closed, past, _nullable(avg))
    table = pa.Table.from_pandas(rows, preserve_index=False)
    for name in ("session_start", "session_end"):
        table = table.set_column(
            table.schema.get_field_index(name), name, pa.array(rows[name].to_numpy(np.int64)).cast(_UTC_MICROS)
        )
    return table.select(SESSION_FEATURES_SCHEMA.fieldNames())
