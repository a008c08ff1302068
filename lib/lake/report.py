"""Summaries of the lake for people: row counts, sample sessions, quarantine reasons."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lib.core.config import Config
from lib.core.schemas import (
    DURATION_S,
    ENRICHED_EVENTS,
    INPUT_LINES,
    LATE_ROWS_DROPPED,
    LIVE_RECOMMENDATIONS,
    LIVE_SESSIONS,
    QUARANTINE,
    RANK,
    REASON,
    RECOMMENDATIONS,
    SESSION_FEATURES,
    SESSION_START,
    STREAM_METRICS,
    TABLES,
    USER_ID,
    USER_PROFILES,
    WATERMARK,
)
from lib.ingest.parsing import reason_code
from lib.ingest.sources import read_table


def table_counts(spark: SparkSession, cfg: Config) -> list[tuple[str, int | None, str]]:
    """``(table, rows or None when missing, location)`` for every table of the lake."""
    counts = []
    for name in TABLES:
        df = read_table(spark, cfg, name)
        counts.append((name, None if df is None else df.count(), cfg.paths.table(name)))
    return counts


def most_active_user(spark: SparkSession, cfg: Config) -> int | None:
    events = read_table(spark, cfg, ENRICHED_EVENTS)
    if events is None:
        return None
    top = events.groupBy(USER_ID).count().orderBy(F.desc("count"), USER_ID).first()
    return None if top is None else top[USER_ID]


def recent_sessions(spark: SparkSession, cfg: Config, limit: int = 5) -> DataFrame | None:
    sessions = read_table(spark, cfg, SESSION_FEATURES)
    return None if sessions is None else sessions.orderBy(F.desc(SESSION_START)).limit(limit)


def live_sessions_of(spark: SparkSession, cfg: Config, user_id: int) -> DataFrame | None:
    live = read_table(spark, cfg, LIVE_SESSIONS)
    return None if live is None else live.where(F.col(USER_ID) == user_id)


def profile_of(spark: SparkSession, cfg: Config, user_id: int) -> DataFrame | None:
    profiles = read_table(spark, cfg, USER_PROFILES)
    return None if profiles is None else profiles.where(F.col(USER_ID) == user_id).drop("item_engagement")


def recommendations_of(spark: SparkSession, cfg: Config, user_id: int, live: bool = False) -> DataFrame | None:
    """The user's batch (or live) recommendations, best first."""
    recs = read_table(spark, cfg, LIVE_RECOMMENDATIONS if live else RECOMMENDATIONS)
    return None if recs is None else recs.where(F.col(USER_ID) == user_id).orderBy(RANK)


def quarantine_reasons(spark: SparkSession, cfg: Config) -> DataFrame | None:
    """Quarantined rows per reason code (the part of the reason before the first colon)."""
    quarantine = read_table(spark, cfg, QUARANTINE)
    if quarantine is None:
        return None
    return quarantine.groupBy(reason_code(F.col(REASON)).alias("reason_code")).count().orderBy(F.desc("count"))


def stream_throughput(spark: SparkSession, cfg: Config) -> DataFrame | None:
    """Totals over the stream's micro-batches."""
    metrics = read_table(spark, cfg, STREAM_METRICS)
    if metrics is None:
        return None
    return metrics.agg(
        F.count(F.lit(1)).alias("batches"),
        F.sum(INPUT_LINES).alias(INPUT_LINES),
        F.sum(LATE_ROWS_DROPPED).alias(LATE_ROWS_DROPPED),
        F.round(F.sum(DURATION_S), 1).alias("busy_s"),
        F.round(F.sum(INPUT_LINES) / F.sum(DURATION_S), 0).alias("rows_per_busy_s"),
        F.round(F.percentile_approx(DURATION_S, 0.5), 2).alias("median_batch_s"),
        F.max(WATERMARK).alias(WATERMARK),
    )
