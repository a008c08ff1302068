"""Parse raw activity lines into typed events, and say why a line or a file is rejected.

Input is one row per line of a CSV file (``RAW_LINES_SCHEMA``), or one row per Kafka message
(``parse_activity_messages``). CSV columns are matched by header name, so every line is
interpreted with the header of its own file; a message is a JSON object keyed by column name. Every check produces a
reason ``"<code>: <detail>"``; a row is valid when it has none. Nothing here raises on bad
input: Spark 4's ANSI mode is respected by using ``try_*`` functions throughout.

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
    INGESTED_AT,
    ITEM_ID,
    RAW,
    REASON,
    REJECTED_LINES,
    REQUIRED_EVENT_COLUMNS,
    SOURCE_FILE,
    TIMESTAMP,
    USER_ID,
)

# A header with more columns than this rejects its file.
MAX_FIELDS = 256
# One CSV field: RFC 4180 quoted (a quote inside is doubled) or unquoted up to the next comma.
_CSV_FIELD = r'(?:^|,)("(?:[^"]|"")*"|[^,]*)'
TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?$"
_INTEGER_PATTERN = r"^[+-]?[0-9]+$"
_BOM = "\ufeff"


def _unquote(field: Column) -> Column:
    return F.when(
        field.startswith('"') & field.endswith('"') & (F.length(field) >= 2),
        F.regexp_replace(F.substring(field, 2, F.length(field) - 2), '""', '"'),
    ).otherwise(field)


def csv_fields(line: Column) -> Column:
    """The fields of a CSV line as ``array<string>``, quotes removed.

    Lines without a quote take the fast path (a plain split); others are tokenized with an
    RFC 4180 regular expression. An empty line has one empty field.
    """
    return F.when(F.instr(line, '"') == 0, F.split(line, ",", -1)).otherwise(
        F.transform(F.regexp_extract_all(line, F.lit(_CSV_FIELD), 1), _unquote)
    )


def file_headers(lines: DataFrame) -> DataFrame:
    """One row per file: its header (first line), the position of every required column,
    the header's width, the count of non-blank data lines, and ``file_reason`` when the
    header rejects the file. The first line of a file is the lowest ``line_id`` of the block
    starting at offset 0.
    """
    # The lowest line id by a hash aggregate, then its text by a broadcast join: a minimum over a
    # struct of (line id, text) would make Spark sort every line of the batch.
    per_file = lines.groupBy(SOURCE_FILE).agg(
        F.min(F.when(F.col("file_block_start") == 0, F.col("line_id"))).alias("header_line_id"),
        (F.count(F.when(F.trim("value") != "", 1)) - 1).alias("file_data_lines"),
    )
    first_lines = lines.select(SOURCE_FILE, F.col("line_id").alias("header_line_id"), F.col("value").alias("header"))
    with_header = first_lines.join(F.broadcast(per_file), [SOURCE_FILE, "header_line_id"])
    header_text = F.regexp_replace(F.col("header"), f"^{_BOM}", "")
    header_fields = F.transform(csv_fields(header_text), lambda h: F.lower(F.trim(h)))
    with_fields = with_header.select(
        SOURCE_FILE,
        "header_line_id",
        "header",
        header_fields.alias("header_fields"),
        "file_data_lines",
    )
    return with_fields.select(
        SOURCE_FILE,
        "header_line_id",
        "header",
        F.size("header_fields").alias("header_width"),
        *[F.array_position("header_fields", name).cast("int").alias(f"pos_{name}") for name in REQUIRED_EVENT_COLUMNS],
        _header_reason(F.col("header_fields")).alias("file_reason"),
        "file_data_lines",
    )


def _header_reason(header_fields: Column) -> Column:
    required = F.array(*[F.lit(c) for c in REQUIRED_EVENT_COLUMNS])
    missing = F.filter(required, lambda c: ~F.array_contains(header_fields, c))
    duplicated = F.filter(required, lambda c: F.size(F.filter(header_fields, lambda h: h == c)) > 1)
    return (
        F.when(
            F.size(header_fields) > MAX_FIELDS,
            F.format_string("too_many_columns: %d, at most %d", F.size(header_fields), F.lit(MAX_FIELDS)),
        )
        .when(F.size(missing) > 0, F.concat(F.lit("missing_columns: "), F.array_join(missing, ", ")))
        .when(F.size(duplicated) > 0, F.concat(F.lit("duplicate_columns: "), F.array_join(duplicated, ", ")))
    )


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


def parse_activity_lines(
    lines: DataFrame, max_line_chars: int = 4096, unsafe_files: dict[str, str] | None = None
) -> DataFrame:
    """Parse raw lines into events with a rejection ``reason`` (null when the row is valid).

    Returns one row per data line of an accepted file and one row per rejected file (its header
    line, with ``rejected_lines`` = its number of data lines); header lines of accepted files
    and blank lines are dropped. Columns: the raw line columns, ``user_id, item_id,
    event_type, event_ts, reason, rejected_lines``.

    :param unsafe_files: files rejected whole for where they are (path -> reason), such as a
        symbolic link out of the watched folder; their content is not kept (``value`` null).
    """
    headers = file_headers(lines)
    unsafe = F.lit(False)
    if unsafe_files:
        unsafe = F.col(SOURCE_FILE).isin(list(unsafe_files))
        reasons = F.create_map(*[F.lit(x) for pair in unsafe_files.items() for x in pair])
        headers = headers.withColumn(
            "file_reason", F.when(unsafe, reasons[F.col(SOURCE_FILE)]).otherwise(F.col("file_reason"))
        )
    joined = lines.join(F.broadcast(headers), SOURCE_FILE, "left")
    is_header = (F.col("file_block_start") == 0) & (F.col("line_id") == F.col("header_line_id"))
    rejected_file = F.col("file_reason").isNotNull()
    # Header lines of accepted files are not data; the data lines of a rejected file are
    # represented by its header's single quarantine row.
    kept = joined.where(F.when(rejected_file, is_header).otherwise(~is_header & (F.trim("value") != "")))
    too_long = F.length("value") > max_line_chars
    tokenized = kept.withColumn("_fields", F.when(~rejected_file & ~too_long, csv_fields(F.col("value"))))
    raw = {name: F.try_element_at(F.col("_fields"), F.col(f"pos_{name}")) for name in REQUIRED_EVENT_COLUMNS}
    line_reason = (
        F.when(~F.is_valid_utf8("value"), F.lit("invalid_utf8"))
        .when(
            too_long,
            F.format_string("line_too_long: %d characters, at most %d", F.length("value"), F.lit(max_line_chars)),
        )
        .when(
            F.size("_fields") != F.col("header_width"),
            F.format_string("field_count: expected %d fields, got %d", F.col("header_width"), F.size("_fields")),
        )
    )
    return _parsed(
        _with_fields(tokenized, raw),
        F.when(~unsafe, F.col("value")),
        F.coalesce(F.col("file_reason"), line_reason),
        F.when(rejected_file, F.col("file_data_lines")),
    )


def _json_field(document: Column, name: str) -> Column:
    # A string value as it is, any other value (number, object, list) as its JSON text, so that
    # 42 and "42" both parse and {"a": 1} is reported as what it is; a JSON null is missing.
    return F.try_variant_get(document, f"$.{name}", "string")


def parse_activity_messages(messages: DataFrame, max_message_chars: int = 4096) -> DataFrame:
    """Parse Kafka messages (``RAW_LINES_SCHEMA`` rows, the value as text) into events with a
    rejection ``reason``, in the shape of ``parse_activity_lines``.

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


def valid_events(parsed: DataFrame) -> DataFrame:
    """Rows of ``parse_activity_lines`` that passed every check, typed."""
    return parsed.where(F.col(REASON).isNull()).select(
        USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TS, SOURCE_FILE, "file_block_start", "line_id"
    )


def quarantine_rows(parsed: DataFrame, ingested_at: Column) -> DataFrame:
    """Rows of ``parse_activity_lines`` that were rejected, in the quarantine table's shape."""
    return parsed.where(F.col(REASON).isNotNull()).select(
        SOURCE_FILE,
        F.make_valid_utf8("value").alias(RAW),
        REASON,
        ingested_at.alias(INGESTED_AT),
        REJECTED_LINES,
    )


def reason_code(reason: Column) -> Column:
    """The code of a quarantine ``reason``: the part of its first reason before the colon."""
    return F.split(F.split(reason, ";")[0], ":")[0]
