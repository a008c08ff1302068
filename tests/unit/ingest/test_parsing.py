"""parse_activity_lines: header matching, every kind of bad row, and the valid edge cases."""

from datetime import datetime

from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType, TimestampType

from lib.core.schemas import RAW_LINES_SCHEMA
from lib.ingest.parsing import csv_fields, parse_activity_lines, quarantine_rows, valid_events

HEADER = "user_id,item_id,event_type,timestamp"
RESULT_SCHEMA = StructType(
    [
        StructField("value", StringType()),
        StructField("user_id", IntegerType()),
        StructField("item_id", IntegerType()),
        StructField("event_type", StringType()),
        StructField("event_ts", TimestampType()),
        StructField("reason", StringType()),
        StructField("rejected_lines", LongType()),
    ]
)


def lines_df(spark, files: dict[str, list[str]]):
    rows, line_id = [], 0
    for name, lines in files.items():
        for line in lines:
            rows.append((line, name, 0, line_id))
            line_id += 1
    return spark.createDataFrame(rows, RAW_LINES_SCHEMA)


def parse(spark, files, **kwargs):
    return parse_activity_lines(lines_df(spark, files), **kwargs).select(*RESULT_SCHEMA.fieldNames())


def ts(text):
    return datetime.fromisoformat(text)


def test_valid_rows_are_typed_and_normalized(spark):
    actual = parse(
        spark,
        {
            "a.csv": [
                HEADER,
                "1,10,view,2024-01-01 00:00:00",
                " 2 , 20 , CLICK ,2024-01-01T00:00:00.5",
                "3,30,Add_To_Cart,2024-01-01 00:00:00.123456",
                '"4","40","view","2024-01-01 23:59:59"',
                "+5,007,view,2024-01-01 00:00:00",
            ]
        },
    )
    expected = spark.createDataFrame(
        [
            ("1,10,view,2024-01-01 00:00:00", 1, 10, "view", ts("2024-01-01 00:00:00"), None, None),
            (" 2 , 20 , CLICK ,2024-01-01T00:00:00.5", 2, 20, "click", ts("2024-01-01 00:00:00.5"), None, None),
            (
                "3,30,Add_To_Cart,2024-01-01 00:00:00.123456",
                3,
                30,
                "add_to_cart",
                ts("2024-01-01 00:00:00.123456"),
                None,
                None,
            ),
            ('"4","40","view","2024-01-01 23:59:59"', 4, 40, "view", ts("2024-01-01 23:59:59"), None, None),
            ("+5,007,view,2024-01-01 00:00:00", 5, 7, "view", ts("2024-01-01 00:00:00"), None, None),
        ],
        RESULT_SCHEMA,
    )
    assert_df_equality(actual, expected, ignore_row_order=True)


INVALID_LINES = dict(
    [
        ("4,,view,2024-01-01 00:00:00", "missing_item_id"),
        ("x,40,view,2024-01-01 00:00:00", "bad_user_id: x"),
        ("1.5,40,view,2024-01-01 00:00:00", "bad_user_id: 1.5"),
        ("99999999999,1,view,2024-01-01 00:00:00", "bad_user_id: 99999999999"),
        ("-5,50,view,2024-01-01 00:00:00", "non_positive_user_id: -5"),
        ("0,0,view,2024-01-01 00:00:00", "non_positive_user_id: 0; non_positive_item_id: 0"),
        ("6,60,purchase,2024-01-01 00:00:00", "unknown_event_type: purchase"),
        ("6,60,,2024-01-01 00:00:00", "missing_event_type"),
        ('11,110,"vi,ew",2024-01-01 00:00:00', "unknown_event_type: vi,ew"),
        ("7,70,view,2024-02-30 00:00:00", "bad_timestamp: 2024-02-30 00:00:00"),
        ("7,70,view,2023-02-29 00:00:00", "bad_timestamp: 2023-02-29 00:00:00"),
        ("7,70,view,2024-13-01 00:00:00", "bad_timestamp: 2024-13-01 00:00:00"),
        ("7,70,view,2024-01-01 24:00:00", "bad_timestamp: 2024-01-01 24:00:00"),
        ("7,70,view,2024-01-01 23:60:00", "bad_timestamp: 2024-01-01 23:60:00"),
        ("7,70,view,2024-01-01 23:59:60", "bad_timestamp: 2024-01-01 23:59:60"),
        ("7,70,view,2024-01-01  00:00:00", "bad_timestamp: 2024-01-01  00:00:00"),
        ("7,70,view,2024-01-01 00:00:00.1234567", "bad_timestamp: 2024-01-01 00:00:00.1234567"),
        ("7,70,view,01/01/2024 10:00", "bad_timestamp: 01/01/2024 10:00"),
        ("7,70,view,2024-01-01 00:00:00+02:00", "bad_timestamp: 2024-01-01 00:00:00+02:00"),
        ("8,80,view,", "missing_timestamp"),
        ("9,90,view", "field_count: expected 4 fields, got 3"),
        ("9,90,view,2024-01-01 00:00:00,extra", "field_count: expected 4 fields, got 5"),
        (",,,", "missing_user_id; missing_item_id; missing_event_type; missing_timestamp"),
    ]
)


def test_invalid_rows_get_a_reason(spark):
    rows = parse(spark, {"a.csv": [HEADER, *INVALID_LINES]}).collect()
    assert {r.value: r.reason for r in rows} == INVALID_LINES
    assert len(rows) == len(INVALID_LINES)


def test_overlong_line_is_rejected_unparsed(spark):
    line = "1,2,view,2024-01-01 00:00:00," + "x" * 200
    [row] = parse(spark, {"a.csv": [HEADER + ",note", line]}, max_line_chars=100).collect()
    assert row.reason == f"line_too_long: {len(line)} characters, at most 100"
    assert row.user_id is None


def test_header_is_matched_by_name_per_file(spark):
    actual = parse(
        spark,
        {
            "reordered.csv": ["timestamp,extra,event_type,item_id,user_id", "2024-01-02 00:00:00,zzz,view,7,8"],
            "bom.csv": ["\ufeffUser_Id, ITEM_ID ,Event_Type,timestamp", "1,2,view,2024-01-01 00:00:00"],
            "header_only.csv": [HEADER],
            "blank_lines.csv": [HEADER, "", "   ", "3,4,click,2024-01-01 00:00:00"],
        },
    )
    expected = spark.createDataFrame(
        [
            ("2024-01-02 00:00:00,zzz,view,7,8", 8, 7, "view", ts("2024-01-02 00:00:00"), None, None),
            ("1,2,view,2024-01-01 00:00:00", 1, 2, "view", ts("2024-01-01 00:00:00"), None, None),
            ("3,4,click,2024-01-01 00:00:00", 3, 4, "click", ts("2024-01-01 00:00:00"), None, None),
        ],
        RESULT_SCHEMA,
    )
    assert_df_equality(actual, expected, ignore_row_order=True)


def test_file_missing_a_column_is_rejected_whole_as_one_row(spark):
    actual = parse(
        spark,
        {
            "missing.csv": ["user_id,item_id,timestamp", "1,2,2024-01-01 00:00:00", "3,4,2024-01-01 00:00:00"],
            "dup.csv": ["user_id,item_id,event_type,timestamp,user_id", "1,2,view,2024-01-01 00:00:00,1"],
            "no_header.csv": ["1,2,view,2024-01-01 00:00:00"],
            "good.csv": [HEADER, "5,6,view,2024-01-01 00:00:00"],
        },
    )
    expected = spark.createDataFrame(
        [
            ("user_id,item_id,timestamp", None, None, None, None, "missing_columns: event_type", 2),
            ("user_id,item_id,event_type,timestamp,user_id", None, None, None, None, "duplicate_columns: user_id", 1),
            (
                "1,2,view,2024-01-01 00:00:00",
                None,
                None,
                None,
                None,
                "missing_columns: user_id, item_id, event_type, timestamp",
                0,
            ),
            ("5,6,view,2024-01-01 00:00:00", 5, 6, "view", ts("2024-01-01 00:00:00"), None, None),
        ],
        RESULT_SCHEMA,
    )
    assert_df_equality(actual, expected, ignore_row_order=True)


def test_valid_and_quarantine_split_is_a_partition(spark):
    parsed = parse_activity_lines(
        lines_df(spark, {"a.csv": [HEADER, "1,2,view,2024-01-01 00:00:00", "x,2,view,2024-01-01 00:00:00"]})
    )
    at = datetime(2024, 5, 1)
    valid = valid_events(parsed).select("user_id", "item_id").collect()
    quarantined = quarantine_rows(parsed, F.lit(at).cast("timestamp")).collect()
    assert [tuple(r) for r in valid] == [(1, 2)]
    assert [(q.source_file, q.raw, q.reason, q.rejected_lines) for q in quarantined] == [
        ("a.csv", "x,2,view,2024-01-01 00:00:00", "bad_user_id: x", None)
    ]


def test_csv_fields_handles_quotes_and_empty_fields(spark):
    df = spark.createDataFrame(
        [
            ('a,"b,c",""', ["a", "b,c", ""]),
            ('"say ""hi""",x', ['say "hi"', "x"]),
            ("1,,3,", ["1", "", "3", ""]),
            ("", [""]),
            (None, None),
        ],
        "line string, expected array<string>",
    ).withColumn("actual", csv_fields(F.col("line")))
    for row in df.collect():
        assert row.actual == row.expected, row.line
