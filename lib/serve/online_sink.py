"""Rows of the stream's DataFrames as online-store documents (``lib.serve.online_store``).

The documents are built in Spark (``to_json`` in the session's UTC time zone, nulls kept) and
only they are collected to the driver: a micro-batch touches a few thousand users at most.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lib.core.schemas import GENERATED_AT, ITEM_ID, MODEL_VERSION, RANK, SCORE, SESSION_ID, USER_ID

# ISO-8601 with the offset, which is "Z" in the session time zone (UTC); null columns are kept.
_JSON_OPTIONS = {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX", "ignoreNullFields": "false"}
ITEMS = "items"


def user_docs(rows: DataFrame, columns: list[str]) -> list[tuple[int, str]]:
    """``(user_id, JSON object of columns)`` for each row (one row per user)."""
    docs = rows.select(USER_ID, F.to_json(F.struct(*columns), _JSON_OPTIONS).alias("doc"))
    return [(row[0], row[1]) for row in docs.collect()]


def recommendation_docs(recommendations: DataFrame) -> list[tuple[int, str]]:
    """One document per user of a recommendations DataFrame (one row per user and rank):
    ``user_id, session_id`` (when present), ``model_version, generated_at`` and ``items``, a list of
    ``{rank, item_id, score}`` best first."""
    per_user = [c for c in (SESSION_ID, MODEL_VERSION, GENERATED_AT) if c in recommendations.columns]
    grouped = recommendations.groupBy(USER_ID).agg(
        *(F.first(c).alias(c) for c in per_user),
        F.array_sort(F.collect_list(F.struct(RANK, ITEM_ID, SCORE))).alias(ITEMS),
    )
    return user_docs(grouped, [USER_ID, *per_user, ITEMS])
