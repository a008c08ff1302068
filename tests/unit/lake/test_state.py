"""The per-batch folders under a query's checkpoint: the open sessions a batch hands to the next,
and the live updates a batch leaves to a later one."""

from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql.types import IntegerType, StructField, StructType

from lib.core.schemas import SESSION_STATE_SCHEMA, USER_ID
from lib.lake.state import PendingUpdatesStore, SessionStateStore, StateMissingError

UPDATES_SCHEMA = StructType([StructField(USER_ID, IntegerType()), StructField("batch", IntegerType())])


def updates(spark, batch_id: int, users: list[int | None]):
    return spark.createDataFrame([(u, batch_id) for u in users], UPDATES_SCHEMA)


def test_state_of_batch_minus_one_is_read_and_older_folders_go(spark, tmp_path):
    store = SessionStateStore(spark, str(tmp_path / "state") + "/")
    assert store.read_before(0).count() == 0
    assert store.read_before(0).schema == SESSION_STATE_SCHEMA
    empty = spark.createDataFrame([], SESSION_STATE_SCHEMA)
    for batch_id in range(4):
        store.write(empty, batch_id)
    # Batch 3 may still be replayed, and it reads batch 2's state: both stay.
    assert store.batches() == [2, 3]
    assert store.read_before(4).schema == SESSION_STATE_SCHEMA
    assert store.read_before(3).count() == 0


def test_a_state_folder_without_its_success_marker_is_missing(spark, tmp_path):
    store = SessionStateStore(spark, str(tmp_path / "state"))
    store.write(spark.createDataFrame([], SESSION_STATE_SCHEMA), 0)
    (Path(store.root) / "batch=0" / "_SUCCESS").unlink()
    (Path(store.root) / "not-a-batch").mkdir()
    assert store.batches() == []
    with pytest.raises(StateMissingError, match="session state of batch 0 is missing"):
        store.read_before(1)


def test_left_updates_are_read_for_the_batches_asked_and_deleted_through_a_batch(spark, tmp_path):
    store = PendingUpdatesStore(spark, str(tmp_path / "pending"))
    assert store.batches() == []
    assert store.read([]) is None
    store.write(updates(spark, 0, [1, None]), 0)
    store.write(updates(spark, 1, [2]), 1)
    store.write(updates(spark, 2, [3]), 2)
    # A replayed batch rewrites its folder with its rows, not beside them.
    store.write(updates(spark, 1, [2]), 1)
    assert store.batches() == [0, 1, 2]
    assert_df_equality(
        store.read([0, 1]),
        updates(spark, 0, [1, None]).unionByName(updates(spark, 1, [2])),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    store.delete_through(1)
    assert store.batches() == [2]
    assert_df_equality(store.read([2]), updates(spark, 2, [3]), ignore_nullable=True)
