"""Point-in-time purchase features.

For a row with an as-of timestamp ``t``, ``past_purchases`` counts the user's purchases with
``purchase_date < to_date(t)`` (UTC) and ``avg_purchase_amount`` is the mean amount of exactly
those purchases (null when there are none, and then ``past_purchases`` is 0).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lib.core.schemas import AVG_PURCHASE_AMOUNT, PAST_PURCHASES, PURCHASE_AMOUNT, PURCHASE_DATE, USER_ID

_AS_OF_DATE = "_as_of_date"


def purchase_history_as_of(keys: DataFrame, purchases: DataFrame) -> DataFrame:
    """Purchase features per distinct ``(user_id, _as_of_date)`` of ``keys``."""
    history = purchases.where(F.col(USER_ID).isNotNull() & F.col(PURCHASE_DATE).isNotNull()).select(
        USER_ID, PURCHASE_DATE, PURCHASE_AMOUNT
    )
    requested = keys.select(USER_ID, _AS_OF_DATE).distinct().alias("k")
    return (
        requested.join(
            history.alias("h"),
            (F.col(f"k.{USER_ID}") == F.col(f"h.{USER_ID}"))
            & (F.col(f"h.{PURCHASE_DATE}") < F.col(f"k.{_AS_OF_DATE}")),
            "left",
        )
        .groupBy(F.col(f"k.{USER_ID}").alias(USER_ID), F.col(f"k.{_AS_OF_DATE}").alias(_AS_OF_DATE))
        .agg(
            F.count(F.col(f"h.{PURCHASE_DATE}")).alias(PAST_PURCHASES),
            F.avg(F.col(f"h.{PURCHASE_AMOUNT}")).alias(AVG_PURCHASE_AMOUNT),
        )
    )


def with_purchase_history(df: DataFrame, purchases: DataFrame, as_of: str) -> DataFrame:
    """Add ``avg_purchase_amount`` and ``past_purchases`` as of the timestamp column ``as_of``.

    Example::

        events.transform(lambda df: with_purchase_history(df, purchases, as_of="event_ts"))
    """
    keyed = df.withColumn(_AS_OF_DATE, F.to_date(F.col(as_of)))
    features = purchase_history_as_of(keyed, purchases)
    return (
        keyed.join(features, [USER_ID, _AS_OF_DATE], "left")
        .drop(_AS_OF_DATE)
        .withColumn(PAST_PURCHASES, F.coalesce(F.col(PAST_PURCHASES), F.lit(0).cast("long")))
    )
