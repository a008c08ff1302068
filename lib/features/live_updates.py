"""A micro-batch's live updates: for each user it touched, what ``user_profiles``,
``live_sessions`` and ``live_recommendations`` need from that batch.

A batch either folds its updates into those tables at once or leaves them to a later batch of
the same run (``lib.stream.query``: a backlog needs only the state after its last batch). Either way
the tables end the same: the profile totals add up (``lib.features.profiles.sum_profile_totals``); the
latest session of a user is either still open after the folding batch or the latest of the
sessions its updates closed; and a user is re-ranked on the latest session, as the batch that
last carried their events would have.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lib.core.config import RecommendConfig
from lib.core.schemas import SESSION_END, SESSION_START, SESSION_STATE_SCHEMA, USER_ID
from lib.features.profiles import TOTALS_COLUMNS, profile_totals
from lib.features.sessions import latest_session_per_user

UPDATE_BATCH = "_batch"
RANKED = "_ranked"  # the batch carried events of the user, and the user had a session in it
CLOSED_SESSION = "_closed_session"  # the user's latest session the batch closed, or null
CLOSED = "_closed"

UPDATE_COLUMNS = (*TOTALS_COLUMNS, RANKED, CLOSED_SESSION, UPDATE_BATCH)


@dataclass(frozen=True)
class BatchChanges:
    """What one batch changed for the live tables, from the batch alone."""

    touched: DataFrame  # user_id: events or a closed session in the batch
    ranked: DataFrame | None  # user_id: events and a session in the batch; None: no events
    totals: DataFrame  # TOTALS_COLUMNS: the batch's profile totals


def batch_changes(events: DataFrame, sessions: DataFrame, rec: RecommendConfig, has_events: bool) -> BatchChanges:
    """:param events: the batch's valid events, late ones included.
    :param sessions: the sessions after the batch (``SESSION_STATE_SCHEMA`` plus ``_closed``).
    :param has_events: whether ``events`` has rows (the caller counted them).
    """
    closed = sessions.where(F.col(CLOSED))
    users = events.select(USER_ID)
    return BatchChanges(
        touched=users.unionByName(closed.select(USER_ID)).distinct(),
        ranked=users.distinct().join(sessions.select(USER_ID), USER_ID, "left_semi") if has_events else None,
        totals=profile_totals(events, closed.select(USER_ID, SESSION_START, SESSION_END), rec),
    )


def live_updates(changes: BatchChanges, sessions: DataFrame, batch_id: int) -> DataFrame:
    """The batch's changes as rows (``UPDATE_COLUMNS``), one per user it touched, to be folded
    by a later batch.

    :param sessions: the sessions after the batch (``SESSION_STATE_SCHEMA`` plus ``_closed``).
    """
    latest_closed = latest_session_per_user(sessions.where(F.col(CLOSED))).select(
        USER_ID, F.struct(*SESSION_STATE_SCHEMA.fieldNames()).alias(CLOSED_SESSION)
    )
    rows = changes.totals
    if changes.ranked is not None:
        rows = rows.join(changes.ranked.withColumn(RANKED, F.lit(True)), USER_ID, "left")
    else:
        rows = rows.withColumn(RANKED, F.lit(None).cast("boolean"))
    return rows.join(latest_closed, USER_ID, "left").select(
        *TOTALS_COLUMNS,
        F.coalesce(F.col(RANKED), F.lit(False)).alias(RANKED),
        CLOSED_SESSION,
        F.lit(batch_id).cast("long").alias(UPDATE_BATCH),
    )


def updates_after(updates: DataFrame, batch_id: int) -> DataFrame:
    """The updates of the batches after ``batch_id``."""
    return updates.where(F.col(UPDATE_BATCH) > F.lit(batch_id))


def session_pool(sessions: DataFrame, updates: DataFrame | None) -> DataFrame:
    """``sessions`` plus the sessions ``updates`` closed (``SESSION_STATE_SCHEMA`` plus ``_closed``)."""
    pool = sessions.select(*SESSION_STATE_SCHEMA.fieldNames(), CLOSED)
    if updates is None:
        return pool
    closed = updates.where(F.col(CLOSED_SESSION).isNotNull()).select(f"{CLOSED_SESSION}.*")
    return pool.unionByName(closed.select(*SESSION_STATE_SCHEMA.fieldNames(), F.lit(True).alias(CLOSED)))
