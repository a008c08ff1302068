"""The steps of one micro-batch, each a function of explicit inputs: the batch's context
(``BatchContext``) and what earlier steps returned. ``lib.stream.query.SessionBatchWriter`` runs them,
in the order and with the dependencies written in its ``_process``.

Every write is exactly once on its own: the sinks (``lib.lake.sinks``) skip what a crashed attempt
of the same batch committed, the session state is kept per batch (``lib.lake.state``), and the
online store ignores a batch it has applied (``lib.serve.online_store``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lib.core.config import Config, micros
from lib.core.schemas import (
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
    REASON,
    RECENT_EVENTS,
    SESSION_END,
    SESSION_FEATURES,
    SESSION_FEATURES_SCHEMA,
    SESSION_ID,
    SESSION_START,
    SESSION_STATE_SCHEMA,
    SOURCE_FILE,
    UPDATED_AT,
    USER_ID,
    USER_PROFILES,
    USER_PROFILES_SCHEMA,
)
from lib.features.interactions import event_weight
from lib.features.live_updates import (
    CLOSED,
    RANKED,
    UPDATE_COLUMNS,
    BatchChanges,
    session_pool,
    updates_after,
)
from lib.features.profiles import PROFILE_CHANGED, TOTALS_COLUMNS, sum_profile_totals, updated_profiles
from lib.features.sessions import (
    event_fragments,
    is_closed,
    latest_session_per_user,
    merge_sessions,
    with_session_metrics,
)
from lib.ingest.enrich import with_purchase_history
from lib.ingest.parsing import parse_activity_lines, parse_activity_messages, quarantine_rows, valid_events
from lib.ingest.sources import unsafe_files
from lib.lake.sinks import BatchSink
from lib.lake.state import PendingUpdatesStore, SessionStateStore
from lib.recommend.live import EMPTY_SLOT, LiveRanker, live_exclusions, with_rank_slots
from lib.serve.online_sink import recommendation_docs, user_docs
from lib.serve.online_store import SQLiteStore

# The tables only the state after a backlog's last batch matters for: a batch may leave them to
# a later one while more input waits (``lib.ingest.backlog``).
LIVE_TABLES = (USER_PROFILES, LIVE_SESSIONS, LIVE_RECOMMENDATIONS)


def micros_literal(value: int | None) -> Column:
    """A timestamp column of ``value`` microseconds since the epoch (null for None).

    Timestamps cross the Python boundary as epoch microseconds, never as naive datetimes, so
    the driver's local time zone cannot shift them."""
    return F.timestamp_micros(F.lit(value).cast("long"))


class Persisted:
    """The DataFrames a micro-batch persists, unpersisted together when it ends::

    with Persisted() as persisted:
        parsed = persisted.keep(parse(batch_df))
    """

    def __init__(self) -> None:
        self._frames: list[DataFrame] = []

    def keep(self, df: DataFrame) -> DataFrame:
        self._frames.append(df.persist())
        return df

    def __enter__(self) -> Persisted:
        return self

    def __exit__(self, *_exc) -> None:
        # Newest first: Spark re-plans every cached plan that still reads a plan it uncaches, and
        # the frames kept later are built on those kept earlier. Oldest first re-planned them,
        # Delta scans included, about 2 s a micro-batch on 2 cores.
        for df in reversed(self._frames):
            df.unpersist()
        self._frames.clear()


@dataclass(frozen=True)
class BatchContext:
    """What every step of micro-batch ``batch_id`` shares."""

    spark: SparkSession
    cfg: Config
    batch_id: int
    sink: BatchSink
    store: SQLiteStore | None  # None in the events query (lib.stream.events), which serves nothing
    purchases: DataFrame  # the purchase history as this batch read it
    ingested_at: Column  # the batch's start: ingested_at / updated_at of the rows it writes
    keep: Callable[[DataFrame], DataFrame]  # persist a DataFrame until the batch ends

    def table(self, name: str) -> str:
        return self.cfg.paths.table(name)


def parse_batch(batch_df: DataFrame, cfg: Config, keep: Callable[[DataFrame], DataFrame]) -> DataFrame:
    """The micro-batch's input parsed with the rules of its source (``lib.ingest.parsing``)."""
    if cfg.source.kind == "kafka":
        return parse_activity_messages(batch_df, cfg.stream.max_line_chars)
    # Cached so the files are read once: parsing looks at them twice (headers, lines).
    lines = keep(batch_df.withColumn("line_id", F.monotonically_increasing_id()))
    files = [row[0] for row in lines.select(SOURCE_FILE).distinct().collect()]
    unsafe = unsafe_files(files, cfg.paths.events_dir)
    return parse_activity_lines(lines, cfg.stream.max_line_chars, unsafe)


@dataclass(frozen=True)
class ParsedBatch:
    """The batch's input, parsed, and counted against the watermark before it."""

    parsed: DataFrame  # every input row, with its ``reason`` (null: valid)
    events: DataFrame  # the valid rows, late ones included
    on_time: DataFrame  # the valid rows the watermark admits
    rows: int
    valid_rows: int
    late_rows: int
    previous_max_end: int | None  # the latest session end of the state before, in microseconds
    max_on_time: int | None  # the latest event time of ``on_time``, in microseconds

    @property
    def quarantined_rows(self) -> int:
        return self.rows - self.valid_rows


def read_batch(ctx: BatchContext, batch_df: DataFrame, state: DataFrame | None) -> ParsedBatch:
    """Parse the batch and count it; ``state`` is the open sessions before it (None: the events
    query, which keeps no sessions, so no event is late to it).

    The watermark is ``latest session end of the state - sessions.watermark``: events older
    than it are late (written to ``enriched_events``, left out of the sessions)."""
    parsed = ctx.keep(parse_batch(batch_df, ctx.cfg, ctx.keep))
    previous_max_end = None if state is None else state.agg(F.max(F.unix_micros(SESSION_END))).first()[0]
    if previous_max_end is None:
        late = F.lit(False)
    else:
        late = F.unix_micros(EVENT_TS) < F.lit(previous_max_end - micros(ctx.cfg.sessions.watermark_seconds))
    valid = F.col(REASON).isNull()
    counts = parsed.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(valid, 1)).alias("valid"),
        F.count(F.when(valid & late, 1)).alias("late"),
        F.max(F.when(valid & ~late, F.unix_micros(EVENT_TS))).alias("max_on_time"),
    ).first()
    events = valid_events(parsed)
    return ParsedBatch(
        parsed=parsed,
        events=events,
        on_time=events.where(~late),
        rows=counts["rows"],
        valid_rows=counts["valid"],
        late_rows=counts["late"],
        previous_max_end=previous_max_end,
        max_on_time=counts["max_on_time"],
    )


def write_enriched(ctx: BatchContext, batch: ParsedBatch) -> None:
    if batch.valid_rows:
        enriched = with_purchase_history(batch.events, ctx.purchases, as_of=EVENT_TS).withColumn(
            INGESTED_AT, ctx.ingested_at
        )
        ctx.sink.append(enriched.select(*ENRICHED_EVENTS_SCHEMA.fieldNames()), ctx.table(ENRICHED_EVENTS), ctx.batch_id)


def write_quarantine(ctx: BatchContext, batch: ParsedBatch) -> None:
    if batch.quarantined_rows:
        ctx.sink.append(quarantine_rows(batch.parsed, ctx.ingested_at), ctx.table(QUARANTINE), ctx.batch_id)


def write_item_popularity(ctx: BatchContext, batch: ParsedBatch) -> None:
    """Add the batch's engagement per item to the online store's popularity (its fallback)."""
    if batch.valid_rows:
        weight = event_weight(ctx.cfg.recommend)
        engagement = batch.events.groupBy(ITEM_ID).agg(F.sum(weight).alias("engagement"))
        ctx.store.add_item_engagement(ctx.batch_id, [(r[0], r[1]) for r in engagement.collect()])


@dataclass(frozen=True)
class SessionizedBatch:
    """The sessions after the batch: the state's open sessions merged with its on-time events."""

    sessions: DataFrame  # SESSION_STATE_SCHEMA plus CLOSED: whether the batch closed it
    watermark_micros: int | None  # after the batch
    closed: int
    open: int


def sessionize_batch(ctx: BatchContext, batch: ParsedBatch, state: DataFrame) -> SessionizedBatch:
    """A session closes when the watermark after the batch has passed ``session_end + gap``."""
    gap_s = ctx.cfg.sessions.gap_seconds
    max_end = max((t for t in (batch.previous_max_end, batch.max_on_time) if t is not None), default=None)
    watermark = None if max_end is None else max_end - micros(ctx.cfg.sessions.watermark_seconds)
    fragments = event_fragments(batch.on_time).unionByName(state)
    sessions = ctx.keep(merge_sessions(fragments, gap_s).withColumn(CLOSED, is_closed(watermark, gap_s)))
    outcome = sessions.agg(
        F.count(F.when(F.col(CLOSED), 1)).alias("closed"),
        F.count(F.when(~F.col(CLOSED), 1)).alias("open"),
    ).first()
    return SessionizedBatch(sessions, watermark, outcome["closed"], outcome["open"])


def write_session_features(ctx: BatchContext, batch: SessionizedBatch) -> None:
    if batch.closed:
        closed = (
            batch.sessions.where(CLOSED)
            .transform(with_session_metrics)
            .transform(lambda df: with_purchase_history(df, ctx.purchases, as_of=SESSION_START))
        )
        ctx.sink.append(closed.select(*SESSION_FEATURES_SCHEMA.fieldNames()), ctx.table(SESSION_FEATURES), ctx.batch_id)


def write_state(ctx: BatchContext, state_store: SessionStateStore, batch: SessionizedBatch) -> None:
    """Keep the open sessions for the next batch."""
    open_sessions = batch.sessions.where(~F.col(CLOSED)).select(*SESSION_STATE_SCHEMA.fieldNames())
    state_store.write(open_sessions, ctx.batch_id)


def write_pending_updates(ctx: BatchContext, pending: PendingUpdatesStore, updates: DataFrame) -> None:
    """Leave the batch's live updates (``lib.features.live_updates``) for the backlog's last batch."""
    pending.write(updates, ctx.batch_id)


def _distinct_users(own: DataFrame | None, left: DataFrame | None) -> DataFrame | None:
    """The users of the batch's own changes and of the updates earlier batches left, once each."""
    if own is None or left is None:
        return own if left is None else left
    return own.unionByName(left).distinct()


@dataclass(frozen=True)
class LiveFold:
    """What a batch folds into ``LIVE_TABLES``: its own changes and the updates earlier batches
    of the run left (``lib.features.live_updates``), each table from the first batch it lacks."""

    batch_id: int
    sessions: DataFrame  # after this batch (SESSION_STATE_SCHEMA plus CLOSED: those it closed)
    own: BatchChanges | None  # None: the batch changed nothing
    left: DataFrame | None  # UPDATE_COLUMNS rows of left_batches
    left_batches: tuple[int, ...]
    folded: dict[str, int]  # per live table, the last batch it has folded in (-1: none)

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


def live_fold(
    ctx: BatchContext, pending: PendingUpdatesStore, sessions: DataFrame, own: BatchChanges | None
) -> LiveFold:
    """What batch ``ctx.batch_id`` folds into the live tables: ``own`` (None when it changed
    nothing) plus the updates earlier batches left that some table lacks."""
    folded = {name: ctx.sink.last_committed_batch(ctx.table(name)) for name in LIVE_TABLES}
    # A replayed batch's own updates are recomputed; a fold without its own (the end of a run)
    # reads them back.
    left_batches = [
        b
        for b in pending.batches()
        if min(folded.values()) < b and (b < ctx.batch_id or (b == ctx.batch_id and own is None))
    ]
    left = pending.read(left_batches)
    if left is not None:
        left = ctx.keep(left.select(*UPDATE_COLUMNS))
    return LiveFold(ctx.batch_id, sessions, own, left, tuple(left_batches), folded)


def write_live_sessions(ctx: BatchContext, fold: LiveFold) -> None:
    """Each changed user's latest session, to the store and then ``live_sessions``."""
    if not fold.changed(LIVE_SESSIONS):
        return
    touched = fold.users(LIVE_SESSIONS)
    live = (
        latest_session_per_user(fold.pool(LIVE_SESSIONS).join(touched, USER_ID, "left_semi"))
        .withColumn(IS_OPEN, ~F.col(CLOSED))
        .transform(with_session_metrics)
        .transform(lambda df: with_purchase_history(df, ctx.purchases, as_of=SESSION_START))
        .withColumn(UPDATED_AT, ctx.ingested_at)
        .select(*LIVE_SESSIONS_SCHEMA.fieldNames())
    )
    live = ctx.keep(live)
    ctx.store.put_sessions(ctx.batch_id, user_docs(live, LIVE_SESSIONS_SCHEMA.fieldNames()))
    ctx.sink.upsert(live, ctx.table(LIVE_SESSIONS), [USER_ID], ctx.batch_id)


@dataclass(frozen=True)
class ProfileUpdate:
    """The profile rows of the users a fold concerned (the live recommendations exclude the items
    they hold), and the purchase files they were computed from."""

    rows: DataFrame  # USER_PROFILES_SCHEMA plus TOUCHED
    purchase_files: tuple[str, ...]
    # Whether the table lacks them; when a crashed attempt of the batch committed the table,
    # the rows read back serve the live recommendations' exclusions only.
    lacking: bool


def profile_rows(
    ctx: BatchContext, fold: LiveFold, previous_purchase_files: tuple[str, ...] | None
) -> ProfileUpdate | None:
    """The users' new profiles, put in the store (``merge_profiles`` folds them into
    ``user_profiles``); None when the fold changes none.

    :param previous_purchase_files: the purchase files of the stream's previous profile update
        (None: none this run). Users without new activity need a new row only when the purchase
        history changed, so the first update of a run checks every buyer (a restart included).
    """
    if not fold.changed(USER_PROFILES, LIVE_RECOMMENDATIONS):
        return None
    lacking = fold.totals(USER_PROFILES)
    if lacking is None:
        increments = ctx.spark.createDataFrame([], USER_PROFILES_SCHEMA).select(*TOTALS_COLUMNS)
    else:
        increments = ctx.keep(lacking)
    purchase_files = tuple(sorted(ctx.purchases.inputFiles()))
    concerned = fold.users(USER_PROFILES, LIVE_RECOMMENDATIONS)
    if purchase_files != previous_purchase_files:
        concerned = concerned.unionByName(ctx.purchases.select(USER_ID))
    concerned = concerned.distinct()
    stored = ctx.spark.read.format("delta").load(ctx.table(USER_PROFILES))
    rows = ctx.keep(updated_profiles(stored, increments, concerned, ctx.purchases, ctx.cfg.recommend, ctx.ingested_at))
    if lacking is not None:
        ctx.store.put_profiles(ctx.batch_id, user_docs(rows, PROFILE_COLUMNS))
    return ProfileUpdate(rows, purchase_files, lacking=lacking is not None)


def merge_profiles(ctx: BatchContext, profiles: ProfileUpdate) -> None:
    """Fold ``profile_rows`` into ``user_profiles``."""
    if profiles.lacking:
        ctx.sink.upsert(
            profiles.rows, ctx.table(USER_PROFILES), [USER_ID], ctx.batch_id, update_condition=PROFILE_CHANGED
        )


def write_live_recommendations(
    ctx: BatchContext, fold: LiveFold, profiles: ProfileUpdate | None, model: tuple[str, LiveRanker] | None
) -> None:
    """Re-rank the users with new events in a session, to the store and ``live_recommendations``.

    :param profiles: the fold's profile rows (``profile_rows``).
    :param model: the latest model's version and ranker; None: no model yet.
    """
    ranked = fold.ranked(LIVE_RECOMMENDATIONS)
    if ranked is None or model is None or profiles is None:
        return
    model_version, ranker = model
    context = (
        latest_session_per_user(fold.pool(LIVE_RECOMMENDATIONS).join(ranked, USER_ID, "left_semi"))
        .transform(with_session_metrics)
        .select(USER_ID, SESSION_ID, RECENT_EVENTS)
    )
    seen = profiles.rows.select(USER_ID, F.explode(F.map_keys(ITEM_ENGAGEMENT)).alias(ITEM_ID))
    excluded = live_exclusions(context, ctx.purchases, seen, ctx.cfg.recommend)
    # Materialized without their lineage: the MERGE reads its source twice, and neither
    # read may re-plan or recompute the session lineage or the re-ranking.
    context = context.localCheckpoint()
    recs = ranker.recommend(context, excluded, model_version, ctx.ingested_at).localCheckpoint()
    ctx.store.put_live_recommendations(ctx.batch_id, recommendation_docs(recs))
    ctx.sink.upsert(
        with_rank_slots(context.select(USER_ID), recs, ctx.cfg.recommend.top_k),
        ctx.table(LIVE_RECOMMENDATIONS),
        [USER_ID, RANK],
        ctx.batch_id,
        delete_condition=EMPTY_SLOT,
        insert_condition=f"NOT ({EMPTY_SLOT})",
    )
