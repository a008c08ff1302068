"""The Delta sink writes each micro-batch of a stream once: a replayed batch is skipped, another
stream's commits do not count, and a MERGE updates, deletes and inserts as its conditions say."""

import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, MapType, StringType, StructField, StructType

from lib.lake.sinks import BatchSink, compact, data_files, ensure_delta_table, table_properties

SCHEMA = StructType([StructField("k", IntegerType()), StructField("v", StringType())])


def rows(spark, *pairs):
    return spark.createDataFrame(list(pairs), SCHEMA)


def read(spark, path):
    return spark.read.format("delta").load(path)


def test_an_append_is_written_once_per_batch_of_its_own_stream(spark, tmp_path):
    path = str(tmp_path / "events")
    sink, other = BatchSink(spark, "query-a"), BatchSink(spark, "query-b")
    assert sink.last_committed_batch(path) == -1  # no table yet
    assert sink.append(rows(spark, (1, "a"), (None, None)), path, 0)
    assert sink.append(rows(spark, (2, "b")), path, 1)
    assert not sink.append(rows(spark, (2, "b")), path, 1)  # the replay of batch 1
    assert not sink.append(rows(spark, (1, "a")), path, 0)  # and of an older batch
    assert other.append(rows(spark, (3, "c")), path, 0)  # another stream's batch 0 is its own
    assert sink.last_committed_batch(path) == 1
    assert other.last_committed_batch(path) == 0
    assert_df_equality(
        read(spark, path), rows(spark, (1, "a"), (None, None), (2, "b"), (3, "c")), ignore_row_order=True
    )


def test_an_upsert_deletes_updates_and_inserts_as_its_conditions_say_once(spark, tmp_path):
    path = str(tmp_path / "profiles")
    ensure_delta_table(spark, path, SCHEMA)
    ensure_delta_table(spark, path, SCHEMA)  # a second start finds the table
    sink = BatchSink(spark, "query")
    assert sink.upsert(rows(spark, (1, "a"), (2, "b"), (3, "c")), path, ["k"], 0)
    updates = rows(spark, (1, None), (2, "b2"), (3, "keep"), (4, "d"), (5, None))
    conditions = dict(
        delete_condition="s.v IS NULL", update_condition="s.v <> 'keep'", insert_condition="s.v IS NOT NULL"
    )
    assert sink.upsert(updates, path, ["k"], 1, **conditions)
    expected = rows(spark, (2, "b2"), (3, "c"), (4, "d"))
    assert_df_equality(read(spark, path), expected, ignore_row_order=True)
    # The replay of batch 1 (say its rows now differ) leaves the table as the first attempt did.
    assert not sink.upsert(rows(spark, (2, "again")), path, ["k"], 1)
    assert_df_equality(read(spark, path), expected, ignore_row_order=True)
    # The session conf that carried the MERGE's marker is left as it was found.
    assert spark.conf.get("spark.databricks.delta.commitInfo.userMetadata", None) is None


def test_an_upsert_into_an_empty_table_appends_the_rows_its_insert_condition_admits_once(spark, tmp_path):
    path = str(tmp_path / "slots")
    ensure_delta_table(spark, path, SCHEMA)
    sink = BatchSink(spark, "query")
    updates = rows(spark, (1, "a"), (2, None), (1, "a"), (None, "n")).withColumn("only_for_conditions", F.lit(True))
    assert sink.upsert(updates, path, ["k"], 0, delete_condition="s.v IS NULL", insert_condition="s.v IS NOT NULL")
    # What a MERGE into an empty table inserts: every admitted source row, a repeated key too.
    assert_df_equality(read(spark, path), rows(spark, (1, "a"), (1, "a"), (None, "n")), ignore_row_order=True)
    assert DeltaTable.forPath(spark, path).history().first().operation == "WRITE"
    assert not sink.upsert(rows(spark, (3, "c")), path, ["k"], 0)
    assert sink.last_committed_batch(path) == 0
    # The table has rows now: the next batch MERGEs.
    assert sink.upsert(rows(spark, (1, "b")), path, ["k"], 1)
    assert DeltaTable.forPath(spark, path).history().first().operation == "MERGE"


def test_an_app_id_with_the_marker_separator_is_refused(spark):
    with pytest.raises(ValueError, match="must not contain ':'"):
        BatchSink(spark, "query:1")


def test_an_existing_table_gets_the_columns_a_newer_schema_adds_and_keeps_its_rows(spark, tmp_path):
    path = str(tmp_path / "metrics")
    ensure_delta_table(spark, path, SCHEMA)
    BatchSink(spark, "query").append(rows(spark, (1, "a")), path, 0)
    newer = StructType([*SCHEMA.fields, StructField("stage_s", MapType(StringType(), DoubleType()))])
    ensure_delta_table(spark, path, newer)
    ensure_delta_table(spark, path, newer)  # nothing left to add
    assert read(spark, path).schema.simpleString() == newer.simpleString()
    assert [tuple(r) for r in read(spark, path).collect()] == [(1, "a", None)]


def test_table_properties_are_set_on_a_new_table_and_brought_to_an_existing_one(spark, tmp_path):
    def properties(path):
        return spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first().properties

    def versions(path):
        return spark.sql(f"DESCRIBE HISTORY delta.`{path}`").count()

    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    ensure_delta_table(spark, new, SCHEMA, {"delta.checkpointInterval": "100"})
    assert properties(new)["delta.checkpointInterval"] == "100"
    ensure_delta_table(spark, old, SCHEMA)
    assert "delta.checkpointInterval" not in properties(old)
    ensure_delta_table(spark, old, SCHEMA, {"delta.checkpointInterval": "25"})
    assert properties(old)["delta.checkpointInterval"] == "25"
    assert table_properties(spark, old) == properties(old)  # read from the log's checksum
    before = versions(old)
    ensure_delta_table(spark, old, SCHEMA, {"delta.checkpointInterval": "25"})  # as it is: no commit
    assert versions(old) == before


def counted_with_jobs(spark, path, group):
    """``data_files(path)`` and how many Spark jobs it ran."""
    context = spark.sparkContext
    context.setJobGroup(group, "data_files")
    try:
        files = data_files(spark, path)
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    return files, len(context.statusTracker().getJobIdsForGroup(group))


def test_the_data_files_of_a_table_are_counted_from_its_log_without_a_spark_job(spark, tmp_path):
    path = str(tmp_path / "events")
    sink = BatchSink(spark, "query")

    def described():
        return spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first().numFiles

    ensure_delta_table(spark, path, SCHEMA)
    assert counted_with_jobs(spark, path, "empty") == (described(), 0) == (0, 0)
    for batch_id in range(3):
        sink.append(rows(spark, (batch_id, "a"), (None, None)).coalesce(1), path, batch_id)
    assert counted_with_jobs(spark, path, "appended") == (described(), 0) == (3, 0)
    compact(spark, path)
    assert counted_with_jobs(spark, path, "compacted") == (described(), 0) == (1, 0)
    # Without the newest version's checksum, Delta's own count, which runs Spark jobs.
    max((tmp_path / "events" / "_delta_log").glob("*.crc")).unlink()
    files, jobs = counted_with_jobs(spark, path, "no checksum")
    assert files == 1 and jobs > 0
