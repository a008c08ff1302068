"""parse_lines (the hot batch's parse on the driver) gives exactly what the Spark parse gives:
same rows, same typed values, same reasons, on every kind of good and bad line."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from lib.ingest.line_parsing import csv_split, parse_lines, raw_lines_to_arrow, rejected_rows, valid_rows
from lib.ingest.parsing import parse_activity_lines
from tests.unit.ingest.test_parsing import HEADER, INVALID_LINES, lines_df

COLUMNS = ["value", "source_file", "user_id", "item_id", "event_type", "event_ts", "reason", "rejected_lines"]

FILES = {
    "good.csv": [
        HEADER,
        "1,10,view,2024-01-01 00:00:00",
        " 2 , 20 , CLICK ,2024-01-01T00:00:00.5",
        "3,30,Add_To_Cart,2024-01-01 00:00:00.123456",
        '"4","40","view","2024-01-01 23:59:59"',
        "+5,007,view,2024-01-01 00:00:00",
        "",
        "   ",
        "-2147483648,1,view,2024-01-01 00:00:00",
        "2147483647,1,view,2024-01-01 00:00:00",
        "2147483648,1,view,2024-01-01 00:00:00",
        "\t1,2,view,2024-01-01 00:00:00",
    ],
    "bad.csv": [HEADER, *INVALID_LINES],
    "reordered.csv": ["timestamp,extra,event_type,item_id,user_id", "2024-01-02 00:00:00,zzz,view,7,8"],
    "bom.csv": ["\ufeffUser_Id, ITEM_ID ,Event_Type,timestamp", "1,2,view,2024-01-01 00:00:00"],
    "header_only.csv": [HEADER],
    "missing.csv": ["user_id,item_id,timestamp", "1,2,2024-01-01 00:00:00", "3,4,2024-01-01 00:00:00"],
    "dup.csv": ["user_id,item_id,event_type,timestamp,user_id", "1,2,view,2024-01-01 00:00:00,1"],
    "no_header.csv": ["1,2,view,2024-01-01 00:00:00"],
    "wide.csv": [",".join(f"c{i}" for i in range(300)), "1"],
    "long.csv": [HEADER + ",note", "1,2,view,2024-01-01 00:00:00," + "x" * 200, "1,2,view,2024-01-01 00:00:00,y"],
}


def lines_table(files) -> pa.Table:
    rows = [(line, name, 0, i) for i, (name, line) in enumerate((n, x) for n, ls in files.items() for x in ls)]
    return pa.table(
        {
            "value": pa.array([r[0] for r in rows], pa.string()),
            "valid_utf8": pa.array([True] * len(rows)),
            "source_file": pa.array([r[1] for r in rows], pa.string()),
            "file_block_start": pa.array([r[2] for r in rows], pa.int64()),
            "line_id": pa.array([r[3] for r in rows], pa.int64()),
        }
    )


def as_set(rows):
    """The rows as comparable tuples; a rejected row's typed fields are never written, so only its
    text, file, reason and rejected line count count."""
    return {tuple(r) if r[6] is None else (r[0], r[1], None, None, None, None, *r[6:]) for r in rows}


@pytest.mark.parametrize("max_line_chars", [4096, 100])
def test_the_driver_parse_equals_the_spark_parse(spark, max_line_chars):
    unsafe = {"dup.csv": "unsafe_file: a symbolic link; only regular files in the watched folder are read"}
    unsafe = unsafe if max_line_chars == 100 else None
    expected = parse_activity_lines(lines_df(spark, FILES), max_line_chars, unsafe).select(*COLUMNS).collect()
    actual = parse_lines(lines_table(FILES), max_line_chars, unsafe).select(COLUMNS).to_pylist()
    # Spark hands back naive UTC datetimes; Arrow's are aware.
    actual = [{**r, "event_ts": r["event_ts"] and r["event_ts"].replace(tzinfo=None)} for r in actual]
    assert as_set(tuple(r.values()) for r in actual) == as_set(expected)
    assert len(actual) == len(expected)


def test_valid_and_rejected_rows_partition_the_parse():
    parsed = parse_lines(
        lines_table({"a.csv": [HEADER, "1,2,view,2024-01-01 00:00:00", "x,2,view,2024-01-01 00:00:00"]})
    )
    assert valid_rows(parsed).column("user_id").to_pylist() == [1]
    assert rejected_rows(parsed).column("reason").to_pylist() == ["bad_user_id: x"]


def test_an_empty_batch_parses_to_no_rows():
    assert parse_lines(lines_table({})).num_rows == 0


def test_invalid_utf8_lines_are_quarantined_with_their_text_made_valid(spark):
    lines = spark.createDataFrame(
        [(HEADER, "a.csv", 0), ("1,2,view,2024-01-01 00:00:00", "a.csv", 0)],
        "value string, source_file string, file_block_start long",
    ).withColumn("value", F.when(F.col("value").startswith("1"), F.unhex(F.lit("31ff2c32"))).otherwise(F.col("value")))
    lines = lines.withColumn("value", F.col("value").cast("string"))
    parsed = parse_lines(raw_lines_to_arrow(lines))
    assert parsed.column("reason").to_pylist() == ["invalid_utf8"]
    assert parsed.column("value").to_pylist() == ["1\ufffd,2"]


@pytest.mark.parametrize(
    "line, fields",
    [
        ('a,"b,c",""', ["a", "b,c", ""]),
        ('"say ""hi""",x', ['say "hi"', "x"]),
        ("1,,3,", ["1", "", "3", ""]),
        ("", [""]),
    ],
)
def test_csv_split_handles_quotes_and_empty_fields(line, fields):
    assert csv_split(line) == fields
