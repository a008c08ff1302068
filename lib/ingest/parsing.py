"""Parse Kafka messages into typed events in Spark, and say why a message is rejected; the rules
are those of the CSV lines (``lib.ingest.line_parsing``, which parses them on the driver).

Input is one row per Kafka message (``RAW_LINES_SCHEMA``): a JSON object keyed by column name.
Every check produces a reason ``"<code>: <detail>"``; a row is valid when it has none. Nothing
here raises on bad input: Spark 4's ANSI mode is respected by using ``try_*`` functions throughout.

Reason codes: ``missing_columns``, ``duplicate_columns`` (file rejected whole),
``invalid_utf8``, ``line_too_long``, ``field_count``, ``missing_<field>``, ``bad_<field>``,
``non_positive_<field>``, ``unknown_event_type``; for messages also ``message_too_long`` and
``not_a_json_object``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lib.core.schemas import (
    EVENT_TS,
    EVENT_TYPE,
    EVENT_TYPES,
    ITEM_ID,
    REASON,
    REJECTED_LINES,
    REQUIRED_EVENT_COLUMNS,
    SOURCE_FILE,
    TIMESTAMP,
    USER_ID,
)

# A header with more columns than this rejects its file.
MAX_FIELDS = 256
TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?$"
_INTEGER_PATTERN = r"^[+-]?[0-9]+$"


def _id_reason(raw: Column, value: Column, name: str) -> Column:
    """Why ``raw`` is not a positive id; ``value`` is its parsed form (``_parse_id``)."""
    text = F.trim(raw)
    return (
        F.when(raw.isNull() | (text == ""), F.lit(f"missing_{name}"))
        .when(~text.rlike(_INTEGER_PATTERN) | value.isNull(), F.concat(F.lit(f"bad_{name}: "), raw))
        .when(value <= 0, F.concat(F.lit(f"non_positive_{name}: "), text))
    )


def _event_type_reason(raw: Column, normalized: Column) -> Column:
    return F.when(raw.isNull() | (normalized == ""), F.lit(f"missing_{EVENT_TYPE}")).when(
        ~normalized.isin(*EVENT_TYPES), F.concat(F.lit("unknown_event_type: "), raw)
    )


def parse_timestamp(raw: Column) -> Column:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` (or with a ``T``) in the session time zone (UTC) to a
    timestamp; null if invalid."""
    text = F.trim(raw)
    # The pattern fixes the shape (no zone, at most 6 fraction digits); the cast then checks the
    # calendar (no February 30, no hour 24) and costs less than a parse driven by a format.
    return F.when(text.rlike(TIMESTAMP_PATTERN), text.try_cast("timestamp"))


def _timestamp_reason(raw: Column, value: Column) -> Column:
    return F.when(raw.isNull() | (F.trim(raw) == ""), F.lit(f"missing_{TIMESTAMP}")).when(
        value.isNull(), F.concat(F.lit("bad_timestamp: "), raw)
    )


def _parse_id(raw: Column) -> Column:
    return F.trim(raw).try_cast("int")


def _normalize_event_type(raw: Column) -> Column:
    return F.lower(F.trim(raw))


_PARSERS = {USER_ID: _parse_id, ITEM_ID: _parse_id, EVENT_TYPE: _normalize_event_type, TIMESTAMP: parse_timestamp}


def _raw_field(name: str) -> Column:
    return F.col(f"_raw_{name}")


def _typed_field(name: str) -> Column:
    return F.col(f"_typed_{name}")


def _with_fields(rows: DataFrame, raw: dict[str, Column]) -> DataFrame:
    """``rows`` with ``_raw_<name>`` (the text of each required field) and ``_typed_<name>``.

    Typed in a select of their own, so that the value and its reason share one evaluation (the
    optimizer keeps a projection apart rather than repeat a costly expression).
    """
    extracted = rows.select("*", *[raw[name].alias(f"_raw_{name}") for name in REQUIRED_EVENT_COLUMNS])
    return extracted.select(
        "*", *[_PARSERS[name](_raw_field(name)).alias(f"_typed_{name}") for name in REQUIRED_EVENT_COLUMNS]
    )


def _parsed(fields: DataFrame, value: Column, row_reason: Column, rejected_lines: Column) -> DataFrame:
    """The result shape of the parsers: the raw columns, the typed event, and its ``reason``:
    ``row_reason`` (the line, message or file as a whole) first, else every field's reason."""
    field_reasons = [
        _id_reason(_raw_field(USER_ID), _typed_field(USER_ID), USER_ID),
        _id_reason(_raw_field(ITEM_ID), _typed_field(ITEM_ID), ITEM_ID),
        _event_type_reason(_raw_field(EVENT_TYPE), _typed_field(EVENT_TYPE)),
        _timestamp_reason(_raw_field(TIMESTAMP), _typed_field(TIMESTAMP)),
    ]
    # concat_ws skips null reasons, and a reason is never empty: an empty result means none.
    all_field_reasons = F.nullif(F.concat_ws("; ", *field_reasons), F.lit(""))
    return fields.select(
        value.alias("value"),
        SOURCE_FILE,
        "file_block_start",
        "line_id",
        _typed_field(USER_ID).alias(USER_ID),
        _typed_field(ITEM_ID).alias(ITEM_ID),
        _typed_field(EVENT_TYPE).alias(EVENT_TYPE),
        _typed_field(TIMESTAMP).alias(EVENT_TS),
        F.coalesce(row_reason, all_field_reasons).alias(REASON),
        rejected_lines.alias(REJECTED_LINES),
    )


def _json_field(document: Column, name: str) -> Column:
    # A string value as it is, any other value (number, object, list) as its JSON text, so that
    # 42 and "42" both parse and {"a": 1} is reported as what it is; a JSON null is missing.
    return F.try_variant_get(document, f"$.{name}", "string")


def parse_activity_messages(messages: DataFrame, max_message_chars: int = 4096) -> DataFrame:
    """Parse Kafka messages (``RAW_LINES_SCHEMA`` rows, the value as text) into events with a
    rejection ``reason``, in the shape of ``lib.ingest.line_parsing.parse_lines``.

    A message must be a JSON object (duplicate keys reject it) with the keys
    ``user_id``, ``item_id``, ``event_type``, ``timestamp``; extra keys are ignored. Values follow
    the CSV rules: ids are positive whole numbers (a JSON number or a string of digits), the
    event type one of ``EVENT_TYPES`` in any case, the timestamp a ``YYYY-MM-DD HH:MM:SS`` string.
    """
    too_long = F.length("value") > max_message_chars
    documents = messages.withColumn("_document", F.when(~too_long, F.try_parse_json("value")))
    is_object = F.coalesce(F.schema_of_variant(F.col("_document")).startswith("OBJECT<"), F.lit(False))
    raw = {name: _json_field(F.col("_document"), name) for name in REQUIRED_EVENT_COLUMNS}
    message_reason = (
        F.when(F.col("value").isNull(), F.lit("not_a_json_object: empty message"))
        .when(~F.is_valid_utf8("value"), F.lit("invalid_utf8"))
        .when(
            too_long,
            F.format_string("message_too_long: %d characters, at most %d", F.length("value"), F.lit(max_message_chars)),
        )
        .when(~is_object, F.lit("not_a_json_object"))
    )
    return _parsed(_with_fields(documents, raw), F.col("value"), message_reason, F.lit(None).cast("long"))


def reason_code(reason: Column) -> Column:
    """The code of a quarantine ``reason``: the part of its first reason before the colon."""
    return F.split(F.split(reason, ";")[0], ":")[0]
