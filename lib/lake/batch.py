"""Batch jobs over the lake: train and publish the model, rebuild the user profiles."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lib.core.config import Config, micros
from lib.core.schemas import (
    ENRICHED_EVENTS,
    GENERATED_AT,
    ITEM_ID,
    MODEL_VERSION,
    RANK,
    RECOMMENDATIONS,
    RECOMMENDATIONS_SCHEMA,
    SCORE,
    SESSION_FEATURES,
    USER_ID,
    USER_PROFILES,
)
from lib.features.interactions import interactions_from
from lib.features.profiles import with_profiles
from lib.ingest.sources import read_purchases, read_table
from lib.lake.catalog import register_tables
from lib.recommend.model_store import ModelStore
from lib.recommend.models import fit_model, top_k_recommendations
from lib.recommend.session_knn import session_sequences
from lib.serve.online_sink import recommendation_documents
from lib.serve.online_store import SQLiteStore

log = logging.getLogger(__name__)


class LakeNotReadyError(RuntimeError):
    """A table the job needs does not exist yet; the message says which and how to create it."""


def require_table(spark: SparkSession, cfg: Config, name: str, version: int | None = None) -> DataFrame:
    """The Delta table ``name`` (at ``version`` if given); raises ``LakeNotReadyError`` with the fix
    when it is missing."""
    table = read_table(spark, cfg, name)
    if table is not None and version is not None:
        table = spark.read.format("delta").option("versionAsOf", version).load(cfg.paths.table(name))
    if table is None:
        raise LakeNotReadyError(
            f"table {name} does not exist at {cfg.paths.table(name)}: run the stream first "
            "(./spark-submit.sh jobs/stream.py --available-now)"
        )
    return table


def lake_interactions(spark: SparkSession, cfg: Config) -> DataFrame:
    """Every interaction in the lake (events and purchases), one row per user-item pair."""
    events = require_table(spark, cfg, ENRICHED_EVENTS)
    return interactions_from(events, read_purchases(spark, cfg.paths.purchases), cfg.recommend)


def train_and_publish(spark: SparkSession, cfg: Config, model: str | None = None) -> dict:
    """Train on the whole lake, commit a model version and rewrite ``recommendations``."""
    rec = cfg.recommend
    interactions = lake_interactions(spark, cfg).persist()
    try:
        counts = (
            interactions.agg(
                F.count(F.lit(1)).alias("interactions"),
                F.countDistinct(USER_ID).alias("users"),
                F.countDistinct(ITEM_ID).alias("items"),
            )
            .first()
            .asDict()
        )
        if counts["interactions"] == 0:
            raise LakeNotReadyError("the lake holds no interactions yet: nothing to train on")
        trained = fit_model(spark, interactions, rec, model)
        trained.sessions = session_sequences(
            require_table(spark, cfg, ENRICHED_EVENTS), cfg.sessions.gap_seconds, rec.session_index_size
        )
        store = ModelStore.for_config(spark, cfg)
        version = store.save(trained, {"trained_at": datetime.now(timezone.utc).isoformat(), **counts})
        stored = store.load(version)
        recommendations = top_k_recommendations(
            stored.user_scores, stored.popularity, interactions, interactions, rec.top_k, rec.exclude_seen
        ).select(
            USER_ID,
            RANK,
            ITEM_ID,
            SCORE,
            F.lit(version).alias(MODEL_VERSION),
            F.current_timestamp().alias(GENERATED_AT),
        )
        (
            recommendations.select(*RECOMMENDATIONS_SCHEMA.fieldNames())
            .write.format("delta")
            .mode("overwrite")
            .option("overwriteSchema", "true")
            .save(cfg.paths.table(RECOMMENDATIONS))
        )
        register_tables(spark, cfg, [RECOMMENDATIONS])
        published = spark.read.format("delta").load(cfg.paths.table(RECOMMENDATIONS)).toArrow()
        docs = recommendation_documents(published.to_pandas())
        SQLiteStore(cfg.paths.online_store).replace_batch_recommendations(version, docs)
        written = published.num_rows
    finally:
        interactions.unpersist()
    return {"version": version, "model": trained.name, "params": trained.params, "recommendations": written, **counts}


def profiles_from_lake(spark: SparkSession, cfg: Config, versions: dict[str, int] | None = None) -> DataFrame:
    """``user_profiles`` computed from scratch: ``enriched_events``, ``session_features`` and
    the purchases (each table at ``versions[name]`` if given, else its latest version)."""
    events = require_table(spark, cfg, ENRICHED_EVENTS, (versions or {}).get(ENRICHED_EVENTS))
    sessions = require_table(spark, cfg, SESSION_FEATURES, (versions or {}).get(SESSION_FEATURES))
    purchases = read_purchases(spark, cfg.paths.purchases)
    return with_profiles(events, sessions, purchases, cfg.recommend, micros(time.time()))


def _batch_markers(spark: SparkSession, path: str) -> list[tuple[int, str | None, int | None]]:
    """(version, stream, micro-batch) of every commit of a table, oldest first; stream and batch
    are None for commits that no micro-batch made (OPTIMIZE, VACUUM, a rebuild)."""
    history = DeltaTable.forPath(spark, path).history().select("version", "operation", "userMetadata").collect()
    markers = []
    for row in sorted(history, key=lambda r: r["version"]):
        stream, _, batch = (row["userMetadata"] or "").rpartition(":")
        is_batch = row["operation"] in ("WRITE", "MERGE") and stream and batch.isdigit()
        markers.append((row["version"], stream if is_batch else None, int(batch) if is_batch else None))
    return markers


def consistent_versions(spark: SparkSession, cfg: Config) -> tuple[dict[str, int], int | None]:
    """Versions of ``user_profiles`` and of the tables it is computed from, as of one micro-batch
    of the main query, and that batch (None when no batch wrote the profiles).

    The stream commits each table in turn, so "the latest version of each" can straddle two
    batches while it runs. The profiles' newest micro-batch marker names the batch; each input
    table is taken at its last version before a later batch of that stream committed to it.
    """
    profiles = _batch_markers(spark, cfg.paths.table(USER_PROFILES))
    versions = {USER_PROFILES: profiles[-1][0]}
    stamped = [(stream, batch) for _, stream, batch in profiles if stream is not None]
    for name in (ENRICHED_EVENTS, SESSION_FEATURES):
        markers = _batch_markers(spark, cfg.paths.table(name))
        version = markers[-1][0]
        if stamped:
            stream, batch = stamped[-1]
            later = [v for v, s, b in markers if s == stream and b > batch]
            version = later[0] - 1 if later else version
        versions[name] = version
    return versions, stamped[-1][1] if stamped else None


def rebuild_profiles(spark: SparkSession, cfg: Config) -> int:
    """Overwrite ``user_profiles`` with ``profiles_from_lake``; returns the number of profiles."""
    profiles_from_lake(spark, cfg).write.format("delta").mode("overwrite").save(cfg.paths.table(USER_PROFILES))
    return spark.read.format("delta").load(cfg.paths.table(USER_PROFILES)).count()
