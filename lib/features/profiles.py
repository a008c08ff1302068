"""Long-term user profiles: one fold, on the driver for the stream, on the executors for a
rebuild from the lake.

A profile is built from three sources:

- every event of the user (``enriched_events``): counts per type, first and last event time,
  and engagement per item (the event's type weight, ``[recommend]``);
- the user's closed sessions (``session_features``): how many, and their mean length;
- the user's purchases, all of them (every purchase with a user): count and mean non-null
  amount; each purchase also adds ``recommend.purchase_weight`` to its item's engagement.

``top_items`` are the items with the highest engagement, best first (ties: lower id first).

The stream keeps the event and session parts as running totals per user in the online store
(``profile_increments``) and builds the rows of the users that changed (``profile_rows``); the
purchase part is recomputed from the whole history each time, since it changes on its own.
``with_profiles`` runs the same two steps over the whole lake (``jobs/profiles.py``), a group of
users at a time on the executors.

Example::

    totals, engagement = profile_increments(events, closed_sessions, rec.event_weights)
    rows = profile_rows(totals, engagement, PurchaseTotals.from_arrow(purchases, rec.purchase_weight), rec, now)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
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
    PROFILE_COLUMNS,
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
from lib.serve.online_sink import iso_text

# The new profile rows carry whether the batch touched their user (a MERGE condition reads it).
TOUCHED = "_touched"
# A stored profile row is rewritten (MERGE update condition; ``t`` the stored row, ``s`` the new
# one) when the batch touched its user or its purchase side changed.
PROFILE_CHANGED = (
    f"s.{TOUCHED} OR NOT (t.{PAST_PURCHASES} <=> s.{PAST_PURCHASES} "
    f"AND t.{AVG_PURCHASE_AMOUNT} <=> s.{AVG_PURCHASE_AMOUNT} AND t.{TOP_ITEMS} <=> s.{TOP_ITEMS})"
)
COUNTS = (NUM_SESSIONS, NUM_EVENTS, NUM_VIEWS, NUM_CLICKS, NUM_ADD_TO_CART, TOTAL_SESSION_MICROS)
# A user's running totals (times in epoch microseconds; no events: null first/last seen).
TOTALS_COLUMNS = (USER_ID, *COUNTS, FIRST_SEEN, LAST_SEEN)
WEIGHT = "weight"
# ``with_profiles``' input rows: which source a row comes from, and its times in micros.
_PART, _START, _END = "_part", "_start", "_end"
ENGAGEMENT_COLUMNS = (USER_ID, ITEM_ID, WEIGHT)
_UTC_MICROS = pa.timestamp("us", tz="UTC")


def profile_increments(
    events: pd.DataFrame, closed_sessions: pd.DataFrame, event_weights: dict[str, float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What ``events`` (``user_id, item_id, event_type, event_ts`` in micros) and
    ``closed_sessions`` (``user_id, session_start, session_end`` in micros) add to their users'
    totals: ``TOTALS_COLUMNS`` (one row per user) and ``ENGAGEMENT_COLUMNS`` (one per user and item)."""
    kind = events[EVENT_TYPE]
    per_event = pd.DataFrame(
        {
            USER_ID: events[USER_ID].to_numpy(np.int64),
            NUM_EVENTS: 1,
            NUM_VIEWS: (kind == VIEW).to_numpy(np.int64),
            NUM_CLICKS: (kind == CLICK).to_numpy(np.int64),
            NUM_ADD_TO_CART: (kind == ADD_TO_CART).to_numpy(np.int64),
            FIRST_SEEN: events[EVENT_TS].to_numpy(np.int64),
        }
    )
    by_user = per_event.groupby(USER_ID)
    event_part = by_user[[NUM_EVENTS, NUM_VIEWS, NUM_CLICKS, NUM_ADD_TO_CART]].sum()
    event_part[FIRST_SEEN] = by_user[FIRST_SEEN].min()
    event_part[LAST_SEEN] = by_user[FIRST_SEEN].max()
    lengths = pd.DataFrame(
        {
            USER_ID: closed_sessions[USER_ID].to_numpy(np.int64),
            NUM_SESSIONS: 1,
            TOTAL_SESSION_MICROS: (closed_sessions[SESSION_END] - closed_sessions[SESSION_START]).to_numpy(np.int64),
        }
    )
    session_part = lengths.groupby(USER_ID)[[NUM_SESSIONS, TOTAL_SESSION_MICROS]].sum()
    totals = event_part.join(session_part, how="outer")
    for column in COUNTS:
        totals[column] = totals[column].fillna(0).astype(np.int64)
    totals = totals.reset_index()[list(TOTALS_COLUMNS)]
    for column in (FIRST_SEEN, LAST_SEEN):
        totals[column] = totals[column].astype("Int64")
    engagement = (
        pd.DataFrame(
            {
                USER_ID: per_event[USER_ID],
                ITEM_ID: events[ITEM_ID].to_numpy(np.int64),
                WEIGHT: kind.map(event_weights).fillna(0.0).to_numpy(np.float64),
            }
        )
        .groupby([USER_ID, ITEM_ID], as_index=False)[WEIGHT]
        .sum()
    )
    return totals, engagement


@dataclass(frozen=True)
class PurchaseTotals:
    """The purchase part of every buyer's profile: ``per_user`` (``user_id, past_purchases,
    avg_purchase_amount``, indexed by user) and ``bought`` (``ENGAGEMENT_COLUMNS``: each
    purchase of an item adds ``purchase_weight``)."""

    per_user: pd.DataFrame
    bought: pd.DataFrame

    @classmethod
    def from_arrow(cls, purchases: pa.Table, purchase_weight: float) -> PurchaseTotals:
        """:param purchases: ``user_id, item_id, purchase_amount`` (rows without a user never count)."""
        rows = purchases.select([USER_ID, ITEM_ID, PURCHASE_AMOUNT]).to_pandas()
        rows = rows[rows[USER_ID].notna()].astype({USER_ID: np.int64})
        per_user = rows.groupby(USER_ID).agg(
            **{PAST_PURCHASES: (USER_ID, "size"), AVG_PURCHASE_AMOUNT: (PURCHASE_AMOUNT, "mean")}
        )
        bought = rows[rows[ITEM_ID].notna()].astype({ITEM_ID: np.int64})
        bought = bought.groupby([USER_ID, ITEM_ID]).size().mul(purchase_weight).rename(WEIGHT).reset_index()
        return cls(per_user, bought)

    @property
    def buyers(self) -> np.ndarray:
        return self.per_user.index.to_numpy(np.int64)


def _offsets(owners: np.ndarray, users: np.ndarray) -> np.ndarray:
    """List offsets of ``users`` (sorted) over ``owners`` (sorted the same way)."""
    return np.searchsorted(owners, users, side="left").tolist() + [len(owners)]


def profile_rows(
    totals: pd.DataFrame,
    engagement: pd.DataFrame,
    purchases: PurchaseTotals,
    rec: RecommendConfig,
    updated_at_micros: int,
    users: np.ndarray | None = None,
    touched: np.ndarray | None = None,
) -> pa.Table:
    """The ``user_profiles`` rows (``USER_PROFILES_SCHEMA``, plus ``TOUCHED``) of ``users``
    (default: those of ``totals``), ordered by user.

    :param totals: ``TOTALS_COLUMNS`` of the users that have totals.
    :param engagement: ``ENGAGEMENT_COLUMNS`` of those users (the events' part only).
    :param touched: the users whose totals changed (``TOUCHED``; default: all of ``totals``).
    """
    if users is None:
        users = totals[USER_ID].to_numpy(np.int64)
    users = np.unique(np.asarray(users, np.int64))
    if touched is None:
        touched = totals[USER_ID].to_numpy(np.int64)
    frame = pd.DataFrame({USER_ID: users}).merge(totals, on=USER_ID, how="left")
    frame = frame.merge(purchases.per_user, left_on=USER_ID, right_index=True, how="left")
    counts = {c: frame[c].fillna(0).to_numpy(np.int64) for c in COUNTS}
    with np.errstate(invalid="ignore", divide="ignore"):
        sessions, views, clicks = counts[NUM_SESSIONS], counts[NUM_VIEWS], counts[NUM_CLICKS]
        avg_length = np.where(sessions > 0, counts[TOTAL_SESSION_MICROS] / sessions / 1e6, np.nan)
        click_through = np.where(views > 0, clicks / views, np.nan)
        cart_rate = np.where(clicks > 0, counts[NUM_ADD_TO_CART] / clicks, np.nan)
    own = engagement[engagement[USER_ID].isin(users)].sort_values([USER_ID, ITEM_ID])
    bought = purchases.bought[purchases.bought[USER_ID].isin(users)]
    ranked = pd.concat([own, bought], ignore_index=True).groupby([USER_ID, ITEM_ID], as_index=False)[WEIGHT].sum()
    ranked = ranked.sort_values([USER_ID, WEIGHT, ITEM_ID], ascending=[True, False, True])
    ranked = ranked[ranked.groupby(USER_ID).cumcount() < rec.profile_top_items]
    owners = own[USER_ID].to_numpy(np.int64)
    item_engagement = pa.MapArray.from_arrays(
        pa.array(_offsets(owners, users), pa.int32()),
        pa.array(own[ITEM_ID].to_numpy(np.int64), pa.int32()),
        pa.array(own[WEIGHT].to_numpy(np.float64)),
    )
    top_items = pa.ListArray.from_arrays(
        pa.array(_offsets(ranked[USER_ID].to_numpy(np.int64), users), pa.int32()),
        pa.array(ranked[ITEM_ID].to_numpy(np.int64), pa.int32()),
    )
    columns = {
        USER_ID: pa.array(users, pa.int32()),
        **{c: pa.array(counts[c]) for c in (NUM_SESSIONS, NUM_EVENTS, NUM_VIEWS, NUM_CLICKS, NUM_ADD_TO_CART)},
        AVG_SESSION_LENGTH_S: pa.array(avg_length, from_pandas=True),
        CLICK_THROUGH_RATE: pa.array(click_through, from_pandas=True),
        CART_RATE: pa.array(cart_rate, from_pandas=True),
        FIRST_SEEN: pa.array(frame[FIRST_SEEN].astype("Int64"), pa.int64()).cast(_UTC_MICROS),
        LAST_SEEN: pa.array(frame[LAST_SEEN].astype("Int64"), pa.int64()).cast(_UTC_MICROS),
        PAST_PURCHASES: pa.array(frame[PAST_PURCHASES].fillna(0).to_numpy(np.int64)),
        AVG_PURCHASE_AMOUNT: pa.array(frame[AVG_PURCHASE_AMOUNT].to_numpy(np.float64), from_pandas=True),
        TOP_ITEMS: top_items,
        UPDATED_AT: pa.array(np.full(len(users), updated_at_micros, np.int64)).cast(_UTC_MICROS),
        TOTAL_SESSION_MICROS: pa.array(counts[TOTAL_SESSION_MICROS]),
        ITEM_ENGAGEMENT: item_engagement,
    }
    table = pa.table({name: columns[name] for name in USER_PROFILES_SCHEMA.fieldNames()})
    return table.append_column(TOUCHED, pa.array(np.isin(users, touched)))


def with_profiles(
    events: DataFrame,
    closed_sessions: DataFrame,
    purchases: DataFrame,
    rec: RecommendConfig,
    updated_at_micros: int,
    groups: int = 64,
) -> DataFrame:
    """The ``user_profiles`` rows (``USER_PROFILES_SCHEMA``) of every user with ``events``
    (``user_id, item_id, event_type, event_ts``), ``closed_sessions`` (``user_id, session_start,
    session_end``) or ``purchases`` (``PURCHASES_SCHEMA``): the stream's fold, run over ``groups``
    groups of users, each one Python call on an executor (one per user would cost far more)."""
    parts = [
        events.select(USER_ID, ITEM_ID, EVENT_TYPE, F.unix_micros(EVENT_TS).alias(_START)).withColumn(
            _PART, F.lit("event")
        ),
        closed_sessions.select(
            USER_ID, F.unix_micros(SESSION_START).alias(_START), F.unix_micros(SESSION_END).alias(_END)
        ).withColumn(_PART, F.lit("session")),
        purchases.where(F.col(USER_ID).isNotNull())
        .select(USER_ID, ITEM_ID, PURCHASE_AMOUNT)
        .withColumn(_PART, F.lit("purchase")),
    ]
    rows = parts[0].unionByName(parts[1], allowMissingColumns=True).unionByName(parts[2], allowMissingColumns=True)

    def fold(group: pa.Table) -> pa.Table:
        def part(name: str) -> pa.Table:
            return group.filter(pc.equal(group.column(_PART), name))

        group_events = part("event").to_pandas().rename(columns={_START: EVENT_TS})
        closed = part("session").to_pandas().rename(columns={_START: SESSION_START, _END: SESSION_END})
        totals, engagement = profile_increments(group_events, closed, rec.event_weights)
        bought = PurchaseTotals.from_arrow(part("purchase"), rec.purchase_weight)
        users = np.union1d(totals[USER_ID].to_numpy(np.int64), bought.buyers)
        return profile_rows(totals, engagement, bought, rec, updated_at_micros, users).drop_columns([TOUCHED])

    return rows.groupBy(F.pmod(F.xxhash64(USER_ID), F.lit(groups))).applyInArrow(fold, USER_PROFILES_SCHEMA)


def profile_documents(rows: pa.Table) -> list[tuple[int, str]]:
    """``(user_id, JSON of the PROFILE_COLUMNS)`` of each ``profile_rows`` row, as the API serves it."""
    frame = rows.select(PROFILE_COLUMNS).to_pandas()
    for column in (FIRST_SEEN, LAST_SEEN, UPDATED_AT):
        frame[column] = iso_text(frame[column])
    frame[TOP_ITEMS] = frame[TOP_ITEMS].map(lambda items: items.tolist())
    lines = frame.to_json(orient="records", lines=True, double_precision=15).splitlines() if len(frame) else []
    return list(zip(frame[USER_ID].astype(int).tolist(), lines))
