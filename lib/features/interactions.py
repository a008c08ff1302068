"""User-item interactions: what the models learn from.

Events are weighted by type and purchases count as the strongest signal (weights in
``[recommend]``); each user-item pair is kept once, with its strongest signal. The offline
evaluation and EASE's penalty search split them per user the same way (``split_per_user``).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lib.core.config import RecommendConfig
from lib.core.schemas import EVENT_TS, EVENT_TYPE, ITEM_ID, LAST_TS, PURCHASE_DATE, STRENGTH, USER_ID


def event_weight(rec: RecommendConfig, event_type: str | Column = EVENT_TYPE) -> Column:
    """The weight of an event's type (0 for an unknown type), as a column."""
    event_type = F.col(event_type) if isinstance(event_type, str) else event_type
    weight = F.lit(0.0)
    for name, value in rec.event_weights.items():
        weight = F.when(event_type == name, F.lit(value)).otherwise(weight)
    return weight


def interactions_from(events: DataFrame, purchases: DataFrame, rec: RecommendConfig) -> DataFrame:
    """One row per user-item pair (``INTERACTIONS_SCHEMA``): strongest signal, latest time.

    :param events: rows with ``user_id, item_id, event_type, event_ts`` (``enriched_events``).
    :param purchases: rows with ``user_id, item_id, purchase_date``; may be empty.

    A purchase counts at the start of its day (``purchase_date`` as a timestamp).
    """
    signals = events.select(
        USER_ID, ITEM_ID, event_weight(rec).alias(STRENGTH), F.col(EVENT_TS).alias(LAST_TS)
    ).unionByName(
        purchases.select(
            USER_ID,
            ITEM_ID,
            F.lit(rec.purchase_weight).alias(STRENGTH),
            F.col(PURCHASE_DATE).cast("timestamp").alias(LAST_TS),
        )
    )
    return (
        signals.where(F.col(USER_ID).isNotNull() & F.col(ITEM_ID).isNotNull() & (F.col(STRENGTH) > 0))
        .groupBy(USER_ID, ITEM_ID)
        .agg(F.max(STRENGTH).alias(STRENGTH), F.max(LAST_TS).alias(LAST_TS))
    )


SPLITS = ("random", "time")


def split_per_user(
    interactions: DataFrame, how: str, ratio: float = 0.75, seed: int = 42
) -> tuple[DataFrame, DataFrame]:
    """``(train, test)``: the first ``ceil(ratio * n)`` interactions of each user go to train,
    in a seeded random order (``random``) or in time order (``time``)."""
    if how == "random":
        order = [F.rand(seed), F.col(ITEM_ID)]
    elif how == "time":
        order = [F.col(LAST_TS), F.col(ITEM_ID)]
    else:
        raise ValueError(f"unknown split {how!r}; choose one of {SPLITS}")
    ranked = interactions.withColumn(
        "_pos", F.row_number().over(Window.partitionBy(USER_ID).orderBy(*order))
    ).withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy(USER_ID)))
    in_train = F.col("_pos") <= F.ceil(F.col("_n") * F.lit(ratio))
    columns = interactions.columns
    return ranked.where(in_train).select(*columns), ranked.where(~in_train).select(*columns)
