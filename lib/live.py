"""Live re-ranking: recommendations from the current session blended with the model.

For a user with new events, each of the latest events of their live session (up to 20)
votes for its item's neighbours (``item_neighbours`` of the model), with the weight of its
event type, halved every ``recommend.session_half_life`` of age (measured from the session's
latest event). The session signal and the user's model scores are each scaled to [0, 1] per
user and blended: ``session_weight * session + (1 - session_weight) * model``. Users the
model does not know get the session signal alone; popular items fill any remaining places.
Excluded items (purchased, and seen when ``exclude_seen``) are never recommended.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lib.config import RecommendConfig
from lib.interactions import event_weight
from lib.recommend import NEIGHBOUR_ID, WEIGHT, top_k_recommendations
from lib.schemas import (
    EVENT_TS,
    EVENT_TYPE,
    GENERATED_AT,
    ITEM_ID,
    LIVE_RECOMMENDATIONS_SCHEMA,
    MODEL_VERSION,
    RECENT_EVENTS,
    SCORE,
    SESSION_ID,
    USER_ID,
)


def session_scores(context: DataFrame, neighbours: DataFrame, rec: RecommendConfig) -> DataFrame:
    """``user_id, item_id, score`` from the ``recent_events`` of each user's live session."""
    events = context.select(USER_ID, F.explode(RECENT_EVENTS).alias("e")).select(
        USER_ID, F.col(f"e.{ITEM_ID}").alias(ITEM_ID), F.col(f"e.{EVENT_TYPE}").alias(EVENT_TYPE), F.col(f"e.{EVENT_TS}").alias(EVENT_TS)
    )
    latest = F.max(F.unix_micros(EVENT_TS)).over(Window.partitionBy(USER_ID))
    age_s = (latest - F.unix_micros(EVENT_TS)) / F.lit(1_000_000.0)
    votes = events.withColumn("_vote", event_weight(rec) * F.pow(F.lit(0.5), age_s / F.lit(rec.session_half_life_seconds)))
    return (
        votes.join(neighbours, ITEM_ID)
        .groupBy(USER_ID, F.col(NEIGHBOUR_ID).alias(ITEM_ID))
        .agg(F.sum(F.col("_vote") * F.col(WEIGHT)).alias(SCORE))
    )


def _scaled(scores: DataFrame) -> DataFrame:
    """Scores divided by the user's largest absolute score (so the best is 1)."""
    top = F.max(F.abs(SCORE)).over(Window.partitionBy(USER_ID))
    return scores.withColumn(SCORE, F.when(top > 0, F.col(SCORE) / top).otherwise(F.lit(0.0)))


def blend(session: DataFrame, model: DataFrame, session_weight: float) -> DataFrame:
    """``user_id, item_id, score``: the blend of the session and model scores (each scaled)."""
    s = _scaled(session).withColumnRenamed(SCORE, "_s")
    m = _scaled(model).withColumnRenamed(SCORE, "_m")
    return s.join(m, [USER_ID, ITEM_ID], "full").select(
        USER_ID,
        ITEM_ID,
        (F.lit(session_weight) * F.coalesce("_s", F.lit(0.0)) + F.lit(1.0 - session_weight) * F.coalesce("_m", F.lit(0.0))).alias(SCORE),
    )


def live_recommendations(
    context: DataFrame,
    user_scores: DataFrame,
    neighbours: DataFrame,
    popularity: DataFrame,
    excluded: DataFrame,
    rec: RecommendConfig,
    model_version: str,
    generated_at: Column,
) -> DataFrame:
    """``LIVE_RECOMMENDATIONS_SCHEMA`` rows: ``top_k`` per user of ``context``.

    :param context: one row per user: ``user_id, session_id, recent_events``.
    :param excluded: ``user_id, item_id`` pairs never to recommend.
    """
    users = context.select(USER_ID)
    model = user_scores.join(users, USER_ID, "left_semi")
    blended = blend(session_scores(context, neighbours, rec), model, rec.session_weight)
    ranked = top_k_recommendations(blended, popularity, users, excluded, rec.top_k, exclude_seen=True)
    return (
        ranked.join(context.select(USER_ID, SESSION_ID), USER_ID)
        .withColumn(MODEL_VERSION, F.lit(model_version))
        .withColumn(GENERATED_AT, generated_at)
        .select(*LIVE_RECOMMENDATIONS_SCHEMA.fieldNames())
    )
