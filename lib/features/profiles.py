"""Long-term user profiles.

A profile is built from three sources:

- every event of the user (``enriched_events``): counts per type, first and last event time,
  and engagement per item (the event's type weight, ``[recommend]``);
- the user's closed sessions (``session_features``): how many, and their mean length;
- the user's purchases, all of them: count and mean amount; each purchase also adds
  ``recommend.purchase_weight`` to its item's engagement.

``top_items`` are the items with the highest engagement, best first (ties: lower id first).

This module is the rebuild from the lake (``jobs/profiles.py``). The stream keeps the same
event and session parts as running totals in the online store and builds its rows on the driver
(``lib.features.profile_fold``); the tests hold the two to the same rows. The purchase part is
recomputed from the whole purchase history each time, since that history changes on its own.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lib.core.config import RecommendConfig
from lib.core.schemas import (
    ADD_TO_CART,
    AVG_PURCHASE_AMOUNT,
    AVG_SESSION_LENGTH_S,
    CART_RATE,
    CLICK,
    CLICK_THROUGH_RATE,
    EVENT_TS,
    EVENT_TYPE,
    FIRST_SEEN,
    ITEM_ENGAGEMENT,
    ITEM_ID,
    LAST_SEEN,
    NUM_ADD_TO_CART,
    NUM_CLICKS,
    NUM_EVENTS,
    NUM_SESSIONS,
    NUM_VIEWS,
    PAST_PURCHASES,
    PURCHASE_AMOUNT,
    SESSION_END,
    SESSION_START,
    TOP_ITEMS,
    TOTAL_SESSION_MICROS,
    UPDATED_AT,
    USER_ID,
    USER_PROFILES_SCHEMA,
    VIEW,
)
from lib.features.interactions import event_weight

# The new profile rows carry whether the batch touched their user (a MERGE condition reads it).
TOUCHED = "_touched"
# A stored profile row is rewritten (MERGE update condition; ``t`` the stored row, ``s`` the new
# one) when the batch touched its user or its purchase side changed.
PROFILE_CHANGED = (
    f"s.{TOUCHED} OR NOT (t.{PAST_PURCHASES} <=> s.{PAST_PURCHASES} "
    f"AND t.{AVG_PURCHASE_AMOUNT} <=> s.{AVG_PURCHASE_AMOUNT} AND t.{TOP_ITEMS} <=> s.{TOP_ITEMS})"
)
_COUNTS = (NUM_SESSIONS, NUM_EVENTS, NUM_VIEWS, NUM_CLICKS, NUM_ADD_TO_CART, TOTAL_SESSION_MICROS)
TOTALS_COLUMNS = (USER_ID, *_COUNTS, FIRST_SEEN, LAST_SEEN, ITEM_ENGAGEMENT)
_ENGAGEMENT_TYPE = "map<int,double>"


def _engagement_map(pairs: DataFrame, weight: str) -> DataFrame:
    """``user_id, item_engagement``: per user, a map item -> summed ``weight``."""
    return (
        pairs.groupBy(USER_ID, ITEM_ID)
        .agg(F.sum(weight).alias("_w"))
        .groupBy(USER_ID)
        .agg(F.map_from_entries(F.collect_list(F.struct(ITEM_ID, "_w"))).alias(ITEM_ENGAGEMENT))
    )


def _add_maps(left: Column, right: Column) -> Column:
    empty = F.create_map().cast(_ENGAGEMENT_TYPE)
    return F.map_zip_with(
        F.coalesce(left, empty),
        F.coalesce(right, empty),
        lambda _k, a, b: F.coalesce(a, F.lit(0.0)) + F.coalesce(b, F.lit(0.0)),
    )


def profile_totals(events: DataFrame, closed_sessions: DataFrame, rec: RecommendConfig) -> DataFrame:
    """Running totals (``TOTALS_COLUMNS``) of the users in ``events`` or ``closed_sessions``.

    :param events: ``user_id, item_id, event_type, event_ts`` rows.
    :param closed_sessions: ``user_id, session_start, session_end`` rows.
    """

    def count_of(event_type: str) -> Column:
        return F.count(F.when(F.col(EVENT_TYPE) == event_type, 1))

    event_part = (
        events.groupBy(USER_ID)
        .agg(
            F.count(F.lit(1)).alias(NUM_EVENTS),
            count_of(VIEW).alias(NUM_VIEWS),
            count_of(CLICK).alias(NUM_CLICKS),
            count_of(ADD_TO_CART).alias(NUM_ADD_TO_CART),
            F.min(EVENT_TS).alias(FIRST_SEEN),
            F.max(EVENT_TS).alias(LAST_SEEN),
        )
        .join(_engagement_map(events.withColumn("_w", event_weight(rec)), "_w"), USER_ID, "left")
    )
    session_part = closed_sessions.groupBy(USER_ID).agg(
        F.count(F.lit(1)).alias(NUM_SESSIONS),
        F.sum(F.unix_micros(SESSION_END) - F.unix_micros(SESSION_START)).alias(TOTAL_SESSION_MICROS),
    )
    joined = event_part.join(session_part, USER_ID, "full")
    return joined.select(
        USER_ID,
        *[F.coalesce(F.col(c), F.lit(0)).cast("long").alias(c) for c in _COUNTS],
        FIRST_SEEN,
        LAST_SEEN,
        F.coalesce(F.col(ITEM_ENGAGEMENT), F.create_map().cast(_ENGAGEMENT_TYPE)).alias(ITEM_ENGAGEMENT),
    )


def _ratio(numerator: str, denominator: str) -> Column:
    return F.when(F.col(denominator) > 0, F.col(numerator) / F.col(denominator))


def _top_keys(engagement: Column, n: int) -> Column:
    def best_first(a, b):
        return (
            F.when(a["value"] > b["value"], -1)
            .when(a["value"] < b["value"], 1)
            .when(a["key"] < b["key"], -1)
            .when(a["key"] > b["key"], 1)
            .otherwise(0)
        )

    return F.slice(F.transform(F.array_sort(F.map_entries(engagement), best_first), lambda e: e["key"]), 1, n)


def with_profile_metrics(
    totals: DataFrame, purchases: DataFrame, rec: RecommendConfig, updated_at: Column
) -> DataFrame:
    """The ``user_profiles`` rows of the users in ``totals`` or ``purchases``.

    ``totals`` holds the stored running totals; ``purchases`` the whole purchase history (or
    at least every purchase of the users concerned).
    """
    bought = purchases.where(F.col(USER_ID).isNotNull())
    purchase_part = (
        bought.groupBy(USER_ID)
        .agg(F.count(F.lit(1)).alias(PAST_PURCHASES), F.avg(PURCHASE_AMOUNT).alias(AVG_PURCHASE_AMOUNT))
        .join(
            _engagement_map(
                bought.where(F.col(ITEM_ID).isNotNull()).withColumn("_w", F.lit(rec.purchase_weight)), "_w"
            ).withColumnRenamed(ITEM_ENGAGEMENT, "_bought"),
            USER_ID,
            "left",
        )
    )
    profiles = totals.select(*TOTALS_COLUMNS).join(purchase_part, USER_ID, "full")
    return profiles.select(
        USER_ID,
        *[
            F.coalesce(F.col(c), F.lit(0)).cast("long").alias(c)
            for c in (NUM_SESSIONS, NUM_EVENTS, NUM_VIEWS, NUM_CLICKS, NUM_ADD_TO_CART)
        ],
        (_ratio(TOTAL_SESSION_MICROS, NUM_SESSIONS) / F.lit(1_000_000.0)).alias(AVG_SESSION_LENGTH_S),
        _ratio(NUM_CLICKS, NUM_VIEWS).alias(CLICK_THROUGH_RATE),
        _ratio(NUM_ADD_TO_CART, NUM_CLICKS).alias(CART_RATE),
        FIRST_SEEN,
        LAST_SEEN,
        F.coalesce(F.col(PAST_PURCHASES), F.lit(0)).cast("long").alias(PAST_PURCHASES),
        AVG_PURCHASE_AMOUNT,
        _top_keys(_add_maps(F.col(ITEM_ENGAGEMENT), F.col("_bought")), rec.profile_top_items).alias(TOP_ITEMS),
        updated_at.alias(UPDATED_AT),
        F.coalesce(F.col(TOTAL_SESSION_MICROS), F.lit(0)).cast("long").alias(TOTAL_SESSION_MICROS),
        F.coalesce(F.col(ITEM_ENGAGEMENT), F.create_map().cast(_ENGAGEMENT_TYPE)).alias(ITEM_ENGAGEMENT),
    ).select(*USER_PROFILES_SCHEMA.fieldNames())
