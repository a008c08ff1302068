"""A micro-batch persists what it reads more than once, and holds nothing cached once it ends."""

from pyspark import StorageLevel
from pyspark.sql import functions as F

from lib.stream.steps import Persisted


def test_what_a_batch_keeps_is_cached_until_it_ends_and_then_released(spark):
    with Persisted() as persisted:
        events = persisted.keep(spark.range(10).withColumn("user_id", F.when(F.col("id") < 8, F.col("id") % 3)))
        users = persisted.keep(events.groupBy("user_id").count())  # computed from a kept frame
        nothing = persisted.keep(events.where("id < 0"))  # kept but never used
        assert {r.user_id: r["count"] for r in users.collect()} == {None: 2, 0: 3, 1: 3, 2: 2}
        assert nothing.count() == 0
        assert all(df.storageLevel != StorageLevel.NONE for df in (events, users, nothing))
    assert all(df.storageLevel == StorageLevel.NONE for df in (events, users, nothing))
    # Released, not broken: the frames compute again from their sources.
    assert users.count() == 4 and events.where(F.col("user_id").isNull()).count() == 2
