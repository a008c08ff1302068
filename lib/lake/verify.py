"""Verifier: compares the generator's ground truth (``--manifest``) with the tables, as
multisets of keys: missing, duplicated and unexpected rows per table, and closed sessions
against a batch recomputation from the manifest (without the events the watermark rule drops,
whose number must equal what the stream reported).

The recomputation shares no code with the stream's sessions (``lib.features.live_fold``): it groups the
events with Spark's own ``session_window``, so a bug in the stream's merging cannot hide itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from lib.core.config import STREAM_CHECKPOINT, Config, micros
from lib.core.fs import HadoopFS
from lib.core.schemas import (
    ADD_TO_CART,
    CLICK,
    ENRICHED_EVENTS,
    EVENT_TS,
    EVENT_TYPE,
    INGESTED_AT,
    IS_OPEN,
    ITEM_ID,
    LAST_EVENT,
    LATE_ROWS_DROPPED,
    LIVE_RECOMMENDATIONS,
    LIVE_SESSIONS,
    NUM_ADD_TO_CART,
    NUM_CLICKS,
    NUM_EVENTS,
    NUM_VIEWS,
    PROFILE_COLUMNS,
    QUARANTINE,
    RANK,
    RAW,
    REASON,
    RECOMMENDATIONS,
    SESSION_END,
    SESSION_FEATURES,
    SESSION_ID,
    SESSION_START,
    SOURCE_FILE,
    STREAM_METRICS,
    TABLES,
    UPDATED_AT,
    USER_ID,
    USER_PROFILES,
    VIEW,
)
from lib.ingest.backlog import SOURCE_LOG, batch_of_files
from lib.ingest.parsing import parse_timestamp, reason_code

MANIFEST_SCHEMA = StructType(
    [
        StructField("file", StringType()),
        StructField("line", IntegerType()),
        StructField("raw", StringType()),
        StructField("expected_reason", StringType()),
        StructField(USER_ID, IntegerType()),
        StructField(ITEM_ID, IntegerType()),
        StructField(EVENT_TYPE, StringType()),
        StructField(EVENT_TS, StringType()),
    ]
)
SESSION_KEYS = [
    USER_ID,
    SESSION_START,
    SESSION_END,
    NUM_EVENTS,
    NUM_VIEWS,
    NUM_CLICKS,
    NUM_ADD_TO_CART,
    LAST_EVENT,
]


@dataclass(frozen=True)
class TableCheck:
    table: str
    expected: int
    actual: int
    missing: int
    duplicated: int
    unexpected: int

    @property
    def ok(self) -> bool:
        return self.missing == self.duplicated == self.unexpected == 0


def multiset_diff(table: str, expected: DataFrame, actual: DataFrame) -> TableCheck:
    """Compare two DataFrames with the same columns as multisets of rows."""
    keys = expected.columns
    e = expected.groupBy(*keys).agg(F.count(F.lit(1)).alias("_e"))
    a = actual.select(*keys).groupBy(*keys).agg(F.count(F.lit(1)).alias("_a"))
    joined = e.join(a, [e[k].eqNullSafe(a[k]) for k in keys], "full_outer").select(
        F.coalesce("_e", F.lit(0)).alias("e"), F.coalesce("_a", F.lit(0)).alias("a")
    )
    row = joined.agg(
        F.sum("e").alias("expected"),
        F.sum("a").alias("actual"),
        F.sum(F.when(F.col("a") < F.col("e"), F.col("e") - F.col("a")).otherwise(0)).alias("missing"),
        F.sum(F.when((F.col("e") > 0) & (F.col("a") > F.col("e")), F.col("a") - F.col("e")).otherwise(0)).alias(
            "duplicated"
        ),
        F.sum(F.when(F.col("e") == 0, F.col("a")).otherwise(0)).alias("unexpected"),
    ).first()
    return TableCheck(table, *[int(row[c] or 0) for c in ("expected", "actual", "missing", "duplicated", "unexpected")])


def read_manifest(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.schema(MANIFEST_SCHEMA).json(path)


def _basename(column: str):
    """A file's name as the manifest records it; a Kafka message's ``kafka://`` address whole."""
    return F.when(F.col(column).startswith("kafka://"), F.col(column)).otherwise(
        F.regexp_extract(F.col(column), r"([^/]+)$", 1)
    )


def verify(spark: SparkSession, cfg: Config, manifest: DataFrame) -> list[TableCheck]:
    """Check enriched_events, quarantine and session_features against the manifest."""
    table = lambda name: spark.read.format("delta").load(cfg.paths.table(name))  # noqa: E731
    valid = manifest.where(F.col("expected_reason").isNull())
    enriched = multiset_diff(
        ENRICHED_EVENTS,
        valid.select(USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TS, F.col("file").alias(SOURCE_FILE)),
        table(ENRICHED_EVENTS).select(
            USER_ID,
            ITEM_ID,
            EVENT_TYPE,
            F.date_format(EVENT_TS, "yyyy-MM-dd HH:mm:ss").alias(EVENT_TS),
            _basename(SOURCE_FILE).alias(SOURCE_FILE),
        ),
    )
    quarantine = multiset_diff(
        QUARANTINE,
        manifest.where(F.col("expected_reason").isNotNull()).select(
            F.col("file").alias(SOURCE_FILE), F.col("raw").alias(RAW), F.col("expected_reason").alias("code")
        ),
        table(QUARANTINE).select(
            _basename(SOURCE_FILE).alias(SOURCE_FILE),
            RAW,
            reason_code(F.col(REASON)).alias("code"),
        ),
    )
    events = valid.select(
        USER_ID,
        ITEM_ID,
        EVENT_TYPE,
        parse_timestamp(F.col(EVENT_TS)).alias(EVENT_TS),
        F.col("file").alias(SOURCE_FILE),
        F.col("line").cast("long").alias("line"),
    )
    events = with_late_flag(events, input_batches(spark, cfg), cfg.sessions.watermark_seconds).persist()
    on_time = events.where(~F.col("_late")).drop("_late")
    final_watermark = on_time.agg(F.max(F.unix_micros(EVENT_TS))).first()[0]
    watermark = None if final_watermark is None else final_watermark - micros(cfg.sessions.watermark_seconds)
    expected_sessions = closed_sessions(on_time, cfg.sessions.gap_seconds, watermark)
    sessions = multiset_diff(SESSION_FEATURES, expected_sessions, table(SESSION_FEATURES).select(*SESSION_KEYS))
    predicted_late = events.where("_late").count()
    reported_late = table(STREAM_METRICS).agg(F.sum(LATE_ROWS_DROPPED)).first()[0] or 0
    late = TableCheck(
        "late_rows_dropped",
        predicted_late,
        reported_late,
        max(predicted_late - reported_late, 0),
        0,
        max(reported_late - predicted_late, 0),
    )
    events.unpersist()
    return [enriched, quarantine, sessions, late]


def closed_sessions(events: DataFrame, gap_seconds: float, watermark_micros: int | None) -> DataFrame:
    """The sessions of ``events`` (``SESSION_KEYS``) whose end plus the gap the watermark has
    passed, grouped by Spark's ``session_window``.

    The contract's rule: an event more than the gap after the previous one starts a new session,
    one exactly the gap after it does not. Spark's rule is the same: the window of an event at
    ``t`` ends at ``t + gap``, and an event starting at or before that end joins it (the unit
    tests pin both sides of the boundary).
    """
    window = F.session_window(EVENT_TS, f"{micros(gap_seconds)} microseconds")
    latest = F.struct(EVENT_TS, SOURCE_FILE, "line")

    def count_of(event_type: str):
        return F.count(F.when(F.col(EVENT_TYPE) == event_type, 1))

    sessions = events.groupBy(USER_ID, window.alias("_window")).agg(
        F.min(EVENT_TS).alias(SESSION_START),
        F.max(EVENT_TS).alias(SESSION_END),
        F.count(F.lit(1)).alias(NUM_EVENTS),
        count_of(VIEW).alias(NUM_VIEWS),
        count_of(CLICK).alias(NUM_CLICKS),
        count_of(ADD_TO_CART).alias(NUM_ADD_TO_CART),
        F.max_by(EVENT_TYPE, latest).alias(LAST_EVENT),
    )
    closed = (
        F.lit(False)
        if watermark_micros is None
        else F.unix_micros(SESSION_END) + micros(gap_seconds) < watermark_micros
    )
    return sessions.where(closed).select(*SESSION_KEYS)


def input_batches(spark: SparkSession, cfg: Config) -> DataFrame:
    """``(source_file, _batch)``: the main query's micro-batch of each input, in the order of the
    batches (``_batch`` sorts like the batch ids).

    For files, the batch that read each file, from the file source's log under the checkpoint;
    for Kafka messages, the ``ingested_at`` of their row in ``enriched_events`` (the batch's
    start: Kafka offsets logs are purged, and the main query writes Kafka events itself).
    """
    if cfg.source.kind == "files":
        log_dir = f"{cfg.paths.checkpoint(STREAM_CHECKPOINT).rstrip('/')}/{SOURCE_LOG}"
        batches = batch_of_files(HadoopFS(spark), log_dir)
        rows = [(path.rsplit("/", 1)[-1], batch) for path, batch in batches.items()]
        return spark.createDataFrame(rows, f"{SOURCE_FILE} string, _batch long")
    enriched = spark.read.format("delta").load(cfg.paths.table(ENRICHED_EVENTS))
    return enriched.select(_basename(SOURCE_FILE).alias(SOURCE_FILE), F.col(INGESTED_AT).alias("_batch")).distinct()


def with_late_flag(events: DataFrame, batches: DataFrame, watermark_seconds: float) -> DataFrame:
    """Add ``_late``: whether the watermark rule drops the event from session state.

    ``batches`` gives the micro-batch of each file (``input_batches``). The watermark before a
    batch is the latest event time of all earlier batches minus the delay; late events never
    raise that maximum (they are older than it), so it does not matter that they are dropped.
    """
    per_batch = events.join(batches, SOURCE_FILE).groupBy("_batch").agg(F.max(F.unix_micros(EVENT_TS)).alias("_max"))
    before = per_batch.withColumn(
        "_max_before", F.max("_max").over(Window.orderBy("_batch").rowsBetween(Window.unboundedPreceding, -1))
    )
    delay = micros(watermark_seconds)
    return (
        events.join(batches, SOURCE_FILE, "left")
        .join(before.select("_batch", "_max_before"), "_batch", "left")
        .withColumn("_late", F.coalesce(F.unix_micros(EVENT_TS) < F.col("_max_before") - delay, F.lit(False)))
        .drop("_batch", "_max_before")
    )


LIVE_SESSION_KEYS = [*SESSION_KEYS, SESSION_ID, IS_OPEN]


def compare_lakes(spark: SparkSession, cfg: Config, other_lake: str) -> list[TableCheck]:
    """``live_sessions`` and ``session_features`` of this lake against another lake's (e.g. a
    run of the same input without faults); ``updated_at`` and ingestion times aside."""

    def load(lake: str, name: str) -> DataFrame:
        return spark.read.format("delta").load(f"{lake.rstrip('/')}/{name}")

    return [
        multiset_diff(
            f"{name} vs {other_lake}",
            load(other_lake, name).select(*keys),
            load(cfg.paths.lake, name).select(*keys),
        )
        for name, keys in ((LIVE_SESSIONS, LIVE_SESSION_KEYS), (SESSION_FEATURES, SESSION_KEYS))
    ]


# The user_profiles columns of the contract; updated_at says when, not what.
_PROFILE_VALUES = [c for c in PROFILE_COLUMNS if c != UPDATED_AT]


def _profile_values(profiles: DataFrame) -> DataFrame:
    # Streamed sums fold batch by batch, a rebuild sums at once: doubles may differ in the last bits.
    return profiles.select(
        *[F.round(c, 6).alias(c) if t == "double" else F.col(c) for c, t in profiles.select(*_PROFILE_VALUES).dtypes]
    )


def check_profiles(spark: SparkSession, cfg: Config) -> TableCheck:
    """``user_profiles`` as streamed against a rebuild from scratch, both as of one micro-batch
    (``lib.lake.batch.consistent_versions``), so the check holds while the stream runs."""
    from lib.lake.batch import consistent_versions, profiles_from_lake

    versions, _ = consistent_versions(spark, cfg)
    profiles = cfg.paths.table(USER_PROFILES)
    streamed = spark.read.format("delta").option("versionAsOf", versions[USER_PROFILES]).load(profiles)
    rebuilt = profiles_from_lake(spark, cfg, versions)
    return multiset_diff("user_profiles (rebuilt)", _profile_values(rebuilt), _profile_values(streamed))


def _unique(table: str, rows: DataFrame, key: list[str]) -> TableCheck:
    """Rows against distinct keys: every extra row with a key already seen is a duplicate."""
    counts = rows.agg(F.count(F.lit(1)).alias("rows"), F.count_distinct(*key).alias("keys")).first()
    total, keys = int(counts["rows"]), int(counts["keys"])
    return TableCheck(f"{table} unique ({', '.join(key)})", keys, total, 0, total - keys, 0)


def check_lake(spark: SparkSession, cfg: Config, names: bool = True) -> list[TableCheck]:
    """Invariants the tables hold without a ground truth: one row per key where the contract says
    so, and (with ``names``) every table present named ``streamrec.<table>`` at this lake."""
    from lib.ingest.sources import read_table
    from lib.lake.catalog import registered_locations

    keys = {
        SESSION_FEATURES: [USER_ID, SESSION_START],
        LIVE_SESSIONS: [USER_ID],
        USER_PROFILES: [USER_ID],
        RECOMMENDATIONS: [USER_ID, RANK],
        LIVE_RECOMMENDATIONS: [USER_ID, RANK],
    }
    checks = []
    present = []
    for name in TABLES:
        table = read_table(spark, cfg, name)
        if table is None:
            continue
        present.append(name)
        if name in keys:
            checks.append(_unique(name, table, keys[name]))
    if names and spark.conf.get("spark.sql.catalogImplementation") == "hive":
        located = registered_locations(spark) if spark.catalog.databaseExists("streamrec") else {}
        named = sum(located.get(n) == os.path.normpath(cfg.paths.table(n)) for n in present)
        checks.append(TableCheck("named streamrec.<table>", len(present), named, len(present) - named, 0, 0))
    return checks
