"""parse_lines (the micro-batch's parse, on the driver): header matching, every kind of bad row,
and the valid edge cases."""

import random
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType, TimestampType

from lib.ingest.line_parsing import check_event, csv_split, parse_lines, raw_lines_to_arrow, rejected_rows, valid_rows

HEADER = "user_id,item_id,event_type,timestamp"
# The columns of a parsed row the tests compare (parse_messages gives them too).
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


def lines_table(files: dict[str, list[str]], valid_utf8: bool = True) -> pa.Table:
    """The raw lines of ``files`` (name -> lines) as a micro-batch hands them to ``parse_lines``."""
    rows = [(line, name) for name, lines in files.items() for line in lines]
    return pa.table(
        {
            "value": pa.array([r[0] for r in rows], pa.string()),
            "valid_utf8": pa.array([valid_utf8] * len(rows)),
            "source_file": pa.array([r[1] for r in rows], pa.string()),
            "file_block_start": pa.array([0] * len(rows), pa.int64()),
            "line_id": pa.array(range(len(rows)), pa.int64()),
        }
    )


def parse(files, **kwargs) -> set[tuple]:
    """The parsed rows as ``RESULT_SCHEMA`` tuples (timestamps naive UTC); a rejected row's typed
    fields are never written anywhere, so they are left out."""
    rows = parse_lines(lines_table(files), **kwargs).select(RESULT_SCHEMA.fieldNames()).to_pylist()
    result = set()
    for r in rows:
        moment = r["event_ts"] and r["event_ts"].astimezone(timezone.utc).replace(tzinfo=None)
        typed = (r["user_id"], r["item_id"], r["event_type"], moment) if r["reason"] is None else (None,) * 4
        result.add((r["value"], *typed, r["reason"], r["rejected_lines"]))
    return result


def ts(text):
    return datetime.fromisoformat(text)


def test_valid_rows_are_typed_and_normalized():
    actual = parse(
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
    expected = {
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
    }
    assert actual == expected


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
        ("2147483648,1,view,2024-01-01 00:00:00", "bad_user_id: 2147483648"),  # past int
        ("-2147483648,1,view,2024-01-01 00:00:00", "non_positive_user_id: -2147483648"),
        ("\t1,2,view,2024-01-01 00:00:00", "bad_user_id: \t1"),  # spaces are trimmed, tabs are not
    ]
)


def test_invalid_rows_get_a_reason():
    rows = parse({"a.csv": [HEADER, *INVALID_LINES]})
    assert {r[0]: r[5] for r in rows} == INVALID_LINES
    assert len(rows) == len(INVALID_LINES)


def test_overlong_line_is_rejected_unparsed():
    line = "1,2,view,2024-01-01 00:00:00," + "x" * 200
    rows = parse({"a.csv": [HEADER + ",note", line, "1,2,view,2024-01-01 00:00:00,y"]}, max_line_chars=100)
    assert (line, None, None, None, None, f"line_too_long: {len(line)} characters, at most 100", None) in rows
    assert len(rows) == 2


def test_header_is_matched_by_name_per_file():
    actual = parse(
        {
            "reordered.csv": ["timestamp,extra,event_type,item_id,user_id", "2024-01-02 00:00:00,zzz,view,7,8"],
            "bom.csv": ["\ufeffUser_Id, ITEM_ID ,Event_Type,timestamp", "1,2,view,2024-01-01 00:00:00"],
            "header_only.csv": [HEADER],
            "blank_lines.csv": [HEADER, "", "   ", "3,4,click,2024-01-01 00:00:00"],
        },
    )
    assert actual == {
        ("2024-01-02 00:00:00,zzz,view,7,8", 8, 7, "view", ts("2024-01-02 00:00:00"), None, None),
        ("1,2,view,2024-01-01 00:00:00", 1, 2, "view", ts("2024-01-01 00:00:00"), None, None),
        ("3,4,click,2024-01-01 00:00:00", 3, 4, "click", ts("2024-01-01 00:00:00"), None, None),
    }


UNSAFE = "unsafe_file: a symbolic link; only regular files in the watched folder are read"


def test_file_missing_a_column_or_unsafe_is_rejected_whole_as_one_row():
    actual = parse(
        {
            "missing.csv": ["user_id,item_id,timestamp", "1,2,2024-01-01 00:00:00", "3,4,2024-01-01 00:00:00"],
            "dup.csv": ["user_id,item_id,event_type,timestamp,user_id", "1,2,view,2024-01-01 00:00:00,1"],
            "no_header.csv": ["1,2,view,2024-01-01 00:00:00"],
            "good.csv": [HEADER, "5,6,view,2024-01-01 00:00:00"],
            "wide.csv": [",".join(f"c{i}" for i in range(300)), "1"],
            "link.csv": [HEADER, "1,2,view,2024-01-01 00:00:00"],
        },
        unsafe_files={"link.csv": UNSAFE},
    )
    assert actual == {
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
        (",".join(f"c{i}" for i in range(300)), None, None, None, None, "too_many_columns: 300, at most 256", 1),
        (
            None,
            None,
            None,
            None,
            None,
            "unsafe_file: a symbolic link; only regular files in the watched folder are read",
            1,
        ),
    }


def test_valid_and_rejected_rows_partition_the_parse_and_an_empty_batch_has_none():
    parsed = parse_lines(
        lines_table({"a.csv": [HEADER, "1,2,view,2024-01-01 00:00:00", "x,2,view,2024-01-01 00:00:00"]})
    )
    assert valid_rows(parsed).column("user_id").to_pylist() == [1]
    assert rejected_rows(parsed).select(["source_file", "value", "reason"]).to_pylist() == [
        {"source_file": "a.csv", "value": "x,2,view,2024-01-01 00:00:00", "reason": "bad_user_id: x"}
    ]
    assert parse_lines(lines_table({})).num_rows == 0


def test_invalid_utf8_lines_read_by_spark_are_quarantined_with_their_text_made_valid(spark):
    lines = spark.createDataFrame(
        [(HEADER, "a.csv", 0), ("31ff2c32", "a.csv", 0)], "value string, source_file string, file_block_start long"
    )
    raw = F.when(F.col("value") == HEADER, F.col("value").cast("binary")).otherwise(F.unhex("value"))
    parsed = parse_lines(raw_lines_to_arrow(lines.withColumn("value", raw.cast("string"))))
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


def test_the_column_wise_path_gives_the_per_line_checks_values_and_reasons_on_random_edge_lines():
    """Well-formed lines are parsed column-wise, the rest line by line: on a mix of both, every
    row equals ``check_event`` on its fields, in input order."""
    rng = random.Random(5)
    ids = ["1", "42", "007", "0", "2147483647", "2147483648", "9999999999", "-3", " 5", ""]
    kinds = ["view", "click", "add_to_cart", "View", " view", "purchase", ""]
    stamps = [
        "2024-02-29 10:00:00",
        "2023-02-29 10:00:00",
        "2024-02-30 00:00:00",
        "2024-04-31 12:00:00",
        "2024-13-01 00:00:00",
        "2024-00-10 00:00:00",
        "2024-01-00 00:00:00",
        "2024-01-01 24:00:00",
        "2024-01-01 23:60:00",
        "2024-01-01 23:59:60",
        "0000-01-01 00:00:00",
        "0001-01-01 00:00:00",
        "9999-12-31 23:59:59.999999",
        "2024-01-01T10:00:00.5",
        "2024-01-01 10:00:00.123456",
        "1969-12-31 23:59:59",
        "2024-01-01 10:00",
    ]
    lines = [",".join([rng.choice(ids), rng.choice(ids), rng.choice(kinds), rng.choice(stamps)]) for _ in range(4000)]
    lines += ["12,34,view,2024-05-01 10:00:00"] * 500  # plain and valid: the column-wise path
    rng.shuffle(lines)
    parsed = parse_lines(lines_table({"a.csv": [HEADER, *lines]})).to_pylist()
    assert [r["value"] for r in parsed] == lines
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    for line, row in zip(lines, parsed):
        user, item, kind, moment, reason = check_event(*line.split(","))
        assert row["reason"] == reason, line
        if reason is None:
            at = (row["event_ts"] - epoch) // timedelta(microseconds=1)
            assert (row["user_id"], row["item_id"], row["event_type"], at) == (user, item, kind, moment), line
