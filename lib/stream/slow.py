"""The slow cadence: what the stream's Delta side needs beyond appends, folded every
``stream.slow_interval`` from what the micro-batches left in the online store.

Each pass takes the batches the store has applied since a table last folded them (``upto`` is
the store's last applied batch) and writes, each table on its own:

- ``session_features``: the sessions those batches closed;
- ``user_profiles``: the profiles of the users with new events or closed sessions (and of every
  buyer when the purchase history changed), folded into the stored ones (MERGE), and put in the
  store for the API;
- ``live_sessions`` and ``live_recommendations``: the store's documents those batches changed
  (MERGE), or all of them (a snapshot that replaces the table) once that is most of the work; the
  recommendations up to the live ranking's latest, which runs beside the batches;
- ``stream_metrics``: the batches' metrics rows;
- ``enriched_events`` and ``quarantine`` get a Delta log checkpoint every
  ``lake.checkpoint_interval`` commits (their micro-batches never write one);
- every ``stream.compact_every`` passes that folded something the most fragmented table is
  compacted, every ``lake.vacuum_every`` such passes the tables are vacuumed.

Exactly once per table: each commit carries the last batch it folded (``lib.lake.sinks``), and a
table with nothing to write records its progress in the store; a pass after a crash starts from
whichever is later. The store's per-batch rows are dropped once every table has folded them.

Its Spark jobs run in the FAIR scheduler pool ``slow``, so a micro-batch's jobs never queue behind
a long MERGE.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import ArrayType, StructField, StructType

from lib.core.config import Config, micros
from lib.core.schemas import (
    ENRICHED_EVENTS,
    GENERATED_AT,
    ITEM_ID,
    LIVE_RECOMMENDATIONS,
    LIVE_RECOMMENDATIONS_SCHEMA,
    LIVE_SESSIONS,
    LIVE_SESSIONS_SCHEMA,
    MODEL_VERSION,
    QUARANTINE,
    RANK,
    SCORE,
    SESSION_FEATURES,
    SESSION_FEATURES_SCHEMA,
    SESSION_ID,
    STREAM_METRICS,
    STREAM_METRICS_SCHEMA,
    USER_ID,
    USER_PROFILES,
)
from lib.features.profiles import PROFILE_CHANGED, profile_documents, profile_rows
from lib.ingest.purchase_index import PurchaseHistory
from lib.lake.sinks import (
    BatchSink,
    checkpoint_log,
    commits_since_checkpoint,
    compact,
    data_files,
    driver_rows,
    vacuum,
)
from lib.recommend.live import EMPTY_SLOT, with_rank_slots
from lib.serve.live_state import LiveState
from lib.serve.online_sink import ITEMS

log = logging.getLogger(__name__)

SLOW_POOL = "slow"
# The tables the stream compacts, in the order a tie is broken.
COMPACTED_TABLES = (
    ENRICHED_EVENTS,
    LIVE_SESSIONS,
    USER_PROFILES,
    LIVE_RECOMMENDATIONS,
    SESSION_FEATURES,
    STREAM_METRICS,
    QUARANTINE,
)
# The tables every micro-batch appends to: Delta never checkpoints their log on its own (a
# checkpoint makes its commit seconds longer); the slow pass does, every lake.checkpoint_interval
# commits.
HOT_TABLES = (ENRICHED_EVENTS, QUARANTINE)
HOT_CHECKPOINT_INTERVAL = 1_000_000
# The tables that fold the store's per-batch rows: those rows go once all have.
_OUTBOX_READERS = (SESSION_FEATURES, USER_PROFILES, STREAM_METRICS)
# A mirror is replaced by a snapshot of the store once a pass changed this share of its users.
SNAPSHOT_SHARE = 0.25
# A live recommendations document of the store (``lib.serve.online_sink``).
_RECOMMENDATION_DOC = StructType(
    [
        *(LIVE_RECOMMENDATIONS_SCHEMA[c] for c in (USER_ID, SESSION_ID, MODEL_VERSION, GENERATED_AT)),
        StructField(ITEMS, ArrayType(StructType([LIVE_RECOMMENDATIONS_SCHEMA[c] for c in (RANK, ITEM_ID, SCORE)]))),
    ]
)


def due(count: int, every: int) -> bool:
    """Whether pass ``count`` runs a task done one pass in ``every`` (0: never)."""
    return every > 0 and count > 0 and count % every == 0


def table_to_compact(file_counts: dict[str, int]) -> str | None:
    """The stream table with the most data files (``file_counts``: table -> count), or None
    when none has more than one."""
    name, files = max(((t, file_counts.get(t, 0)) for t in COMPACTED_TABLES), key=lambda pair: pair[1])
    return name if files > 1 else None


class SlowCadence:
    """The Delta side of the stream. ``fold()`` runs one pass; ``start()`` runs one every
    ``stream.slow_interval`` in a thread of its own until ``stop()``."""

    def __init__(self, spark: SparkSession, cfg: Config, state: LiveState, app_id: Callable[[], str]):
        self.spark, self.cfg, self.state, self._app_id = spark, cfg, state, app_id
        self.passes = 0
        self.purchases = PurchaseHistory(spark, cfg.paths.purchases, cfg.recommend.purchase_weight)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="slow-cadence", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 300.0) -> None:
        """Stop after the running pass, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        self.spark.sparkContext.setLocalProperty("spark.scheduler.pool", SLOW_POOL)
        while not self._stop.wait(self.cfg.stream.slow_interval_seconds):
            try:
                self.fold()
            except Exception:  # the next pass retries: every table is exactly once on its own
                if self._stop.is_set():
                    return
                log.exception("the slow cadence failed; it tries again in %s", self.cfg.stream.slow_interval)

    def fold(self) -> int:
        """One pass; returns the last batch it folded (-1: none yet)."""
        # A batch counts once its appends are done too: the profiles then never hold events that
        # enriched_events lacks.
        upto = self.state.last_finished_batch()
        if upto < 0:
            return upto
        began = time.monotonic()
        sink = BatchSink(self.spark, self._app_id())
        steps = {
            SESSION_FEATURES: self._session_features,
            USER_PROFILES: self._profiles,
            LIVE_SESSIONS: self._live_sessions,
            LIVE_RECOMMENDATIONS: self._live_recommendations,
            STREAM_METRICS: self._metrics,
        }
        done, took = {}, {}
        for table, step in steps.items():
            path = self.cfg.paths.table(table)
            after = max(sink.last_committed_batch(path), self.state.folded_through(table))
            done[table] = after
            if after < upto:
                started = time.monotonic()
                through = step(sink, path, after, upto)
                done[table] = upto if through is None else through
                if done[table] > after:
                    self.state.record_folded(table, done[table])
                    took[table] = time.monotonic() - started
        self.state.forget_through(min(done[t] for t in _OUTBOX_READERS))
        for table in HOT_TABLES:
            path = self.cfg.paths.table(table)
            if commits_since_checkpoint(self.spark, path) >= self.cfg.lake.checkpoint_interval:
                checkpoint_log(self.spark, path)
        if not took:
            return upto  # nothing new: no maintenance either, so a restart with no input commits nothing
        self.passes += 1
        if due(self.passes, self.cfg.stream.compact_every):
            name = table_to_compact({t: data_files(self.spark, self.cfg.paths.table(t)) for t in COMPACTED_TABLES})
            if name:
                compact(self.spark, self.cfg.paths.table(name))
        if due(self.passes, self.cfg.lake.vacuum_every):
            for name in COMPACTED_TABLES:
                vacuum(self.spark, self.cfg.paths.table(name), self.cfg.lake.retention_hours)
        log.info(
            "slow cadence folded batches through %d in %.2f s (%s)",
            upto,
            time.monotonic() - began,
            ", ".join(f"{table} {seconds:.2f} s" for table, seconds in took.items()),
        )
        return upto

    def _rows(self, outbox: str, after: int, upto: int, schema) -> DataFrame | None:
        table = self.state.outbox(outbox, after, upto)
        if table is None or not table.num_rows:
            return None
        return driver_rows(self.spark, table.select(schema.fieldNames()), schema)

    def _mirror_docs(
        self, table: str, after: int, upto: int | None, schema: StructType
    ) -> tuple[pa.Table | None, bool, int | None]:
        """The store's documents of ``table`` that batches after ``after`` up to ``upto`` (None: any
        later one) wrote last, as an Arrow table of ``schema``; or all of them, when that is at
        least ``SNAPSHOT_SHARE`` of them (True: a snapshot that replaces the mirror, cheaper than a
        MERGE that rewrites most of its files). Also the latest batch among the documents read
        (None: none). A snapshot may hold documents of later batches: the next pass writes them
        again. Arrow's JSON reader parses them (C++, outside the interpreter's lock): Spark's
        ``from_json`` took 3.5 s for 100,000 recommendation documents, this 0.8 to 0.9 s with
        their read from the store."""
        changed = self.state.count_docs(table, after, upto)
        if not changed:
            return None, False, None
        snapshot = changed >= SNAPSHOT_SHARE * self.state.count_docs(table)
        docs, latest = self.state.docs(table) if snapshot else self.state.docs(table, after, upto)
        fields = to_arrow_schema(schema, timezone="UTC")
        options = pa_json.ParseOptions(explicit_schema=fields, unexpected_field_behavior="ignore")
        parsed = pa_json.read_json(io.BytesIO("\n".join(docs).encode()), parse_options=options)
        return parsed.select(fields.names), snapshot, latest

    def _session_features(self, sink: BatchSink, path: str, after: int, upto: int) -> None:
        closed = self._rows("closed_sessions", after, upto, SESSION_FEATURES_SCHEMA)
        if closed is not None:
            sink.append(closed, path, upto)

    def _profiles(self, sink: BatchSink, path: str, after: int, upto: int) -> None:
        purchases = self.purchases.totals()
        # Users without new activity need a new row only when the purchase history changed (its
        # files as of the last profiles are kept in the store, so a restart does not redo them all).
        files = self.purchases.files
        purchases_changed = files != self.state.profiled_purchase_files()
        also = purchases.buyers if purchases_changed else ()
        totals, engagement, users, changed = self.state.profile_totals(after, upto, also=also)
        if len(users):
            now = micros(time.time())
            rows = profile_rows(totals, engagement, purchases, self.cfg.recommend, now, users, changed)
            self.state.store.put_profiles(upto, profile_documents(rows))
            sink.upsert(driver_rows(self.spark, rows), path, [USER_ID], upto, update_condition=PROFILE_CHANGED)
        if purchases_changed:
            self.state.record_profiled_purchase_files(files)

    def _live_sessions(self, sink: BatchSink, path: str, after: int, upto: int) -> None:
        docs, snapshot, _ = self._mirror_docs(LIVE_SESSIONS, after, upto, LIVE_SESSIONS_SCHEMA)
        if docs is None:
            return
        live = driver_rows(self.spark, docs, LIVE_SESSIONS_SCHEMA)
        if snapshot:
            sink.replace(live, path, upto)
        else:
            sink.upsert(live, path, [USER_ID], upto)

    def _live_recommendations(self, sink: BatchSink, path: str, after: int, upto: int) -> int:
        """The mirror up to the latest ranking the store holds, which may be ahead of ``upto``: the
        live ranking runs beside the batches and labels its documents with the last batch it saw,
        so one that lands after this read carries a later batch than any read here (returned)."""
        docs, snapshot, upto = self._mirror_docs(LIVE_RECOMMENDATIONS, after, None, _RECOMMENDATION_DOC)
        if docs is None:
            return after
        items = docs.column(ITEMS).combine_chunks()
        ranked = docs.drop_columns([ITEMS]).take(pc.list_parent_indices(items))
        flat = pc.list_flatten(items)
        for name in (RANK, ITEM_ID, SCORE):
            ranked = ranked.append_column(name, flat.field(name))
        schema = LIVE_RECOMMENDATIONS_SCHEMA
        recs = driver_rows(self.spark, ranked.select(schema.fieldNames()), schema)
        if snapshot:
            sink.replace(recs, path, upto)
            return upto
        users = driver_rows(self.spark, docs.select([USER_ID]))
        slots = with_rank_slots(users, recs, self.cfg.recommend.top_k).select(*schema.fieldNames())
        sink.upsert(
            slots.localCheckpoint(),
            path,
            [USER_ID, RANK],
            upto,
            delete_condition=EMPTY_SLOT,
            insert_condition=f"NOT ({EMPTY_SLOT})",
        )
        return upto

    def _metrics(self, sink: BatchSink, path: str, after: int, upto: int) -> None:
        metrics = self._rows("batch_reports", after, upto, STREAM_METRICS_SCHEMA)
        if metrics is not None:
            sink.append(metrics, path, upto)
