"""parse_messages: Kafka messages (JSON objects) typed by the CSV rules, every kind of bad message
quarantined with its reason, and the valid edge cases."""

from datetime import datetime

from chispa import assert_df_equality

from lib.core.schemas import RAW_LINES_SCHEMA
from lib.ingest.line_parsing import parse_messages, raw_lines_to_arrow
from tests.unit.ingest.test_parsing import RESULT_SCHEMA


def parse(spark, values: list[str | None], max_message_chars: int = 4096):
    rows = [(value, f"kafka://activity/0/{offset}", 0, offset) for offset, value in enumerate(values)]
    messages = spark.createDataFrame(rows, RAW_LINES_SCHEMA)
    parsed = parse_messages(raw_lines_to_arrow(messages), max_message_chars)
    assert parsed.column("line_id").to_pylist() == list(range(len(values)))
    return spark.createDataFrame(parsed).select(*RESULT_SCHEMA.fieldNames())


def test_valid_messages_are_typed_and_normalized(spark):
    values = [
        '{"user_id": 1, "item_id": 10, "event_type": "view", "timestamp": "2024-01-01 00:00:00"}',
        '{"timestamp": "2024-01-01T00:00:00.5", "event_type": " CLICK ", "item_id": "20", "user_id": " 2 ", "x": [1]}',
        '  {"user_id": 3, "item_id": 30, "event_type": "Add_To_Cart", "timestamp": "2024-01-01 00:00:00.123456"}  ',
    ]
    expected = spark.createDataFrame(
        [
            (values[0], 1, 10, "view", datetime(2024, 1, 1), None, None),
            (values[1], 2, 20, "click", datetime(2024, 1, 1, 0, 0, 0, 500000), None, None),
            (values[2], 3, 30, "add_to_cart", datetime(2024, 1, 1, 0, 0, 0, 123456), None, None),
        ],
        RESULT_SCHEMA,
    )
    assert_df_equality(parse(spark, values), expected, ignore_nullable=True)


def test_bad_messages_get_a_reason(spark):
    good = '"event_type": "view", "timestamp": "2024-01-01 00:00:00"'
    values = [
        None,  # a tombstone
        "",
        "not json",
        '{"user_id": 1, "item_id": 1',
        "[1, 2]",
        '"a string"',
        '{"user_id": 1, "user_id": 2, "item_id": 1, ' + good + "}",
        "{}",
        '{"user_id": null, "item_id": 0, ' + good + "}",
        '{"user_id": "user7", "item_id": {"id": 1}, "event_type": "buy", "timestamp": 1704067200}',
        '{"user_id": 1.5, "item_id": -3, "event_type": "view", "timestamp": "2024-02-30 00:00:00"}',
        '{"user_id": 1, "item_id": 1, ' + good + ', "pad": "' + "x" * 100 + '"}',
    ]
    actual = {row["value"]: row["reason"] for row in parse(spark, values, max_message_chars=100).collect()}
    expected = {
        None: "not_a_json_object: empty message",
        "": "not_a_json_object",
        "not json": "not_a_json_object",
        values[3]: "not_a_json_object",
        "[1, 2]": "not_a_json_object",
        '"a string"': "not_a_json_object",
        values[6]: "not_a_json_object",
        "{}": "missing_user_id; missing_item_id; missing_event_type; missing_timestamp",
        values[8]: "missing_user_id; non_positive_item_id: 0",
        values[9]: 'bad_user_id: user7; bad_item_id: {"id":1}; unknown_event_type: buy; bad_timestamp: 1704067200',
        values[10]: "bad_user_id: 1.5; non_positive_item_id: -3; bad_timestamp: 2024-02-30 00:00:00",
        values[11]: f"message_too_long: {len(values[11])} characters, at most 100",
    }
    assert actual == expected
