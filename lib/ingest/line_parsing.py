"""The parse of the micro-batch: raw CSV lines, taken to the driver once as Arrow, parsed there
with the contract's rules; Kafka messages (JSON objects) by the same rules (``parse_messages``).

CSV columns are matched by header name, so every line is interpreted with the header of its own
file. Every check produces a reason ``"<code>: <detail>"``; a row is valid when it has none.
Reason codes: ``missing_columns``, ``duplicate_columns``, ``too_many_columns``, ``unsafe_file``
(file rejected whole), ``invalid_utf8``, ``line_too_long``, ``field_count``, ``missing_<field>``,
``bad_<field>``, ``non_positive_<field>``, ``unknown_event_type``.

A Spark parse of the lines planned a header aggregate, a broadcast join and about forty
expressions every micro-batch: 0.7 to 1.1 s and three Spark jobs for 2,000 lines on 2 cores.
Reading the lines to Arrow is one job of 0.06 to 0.12 s; this parse then runs on the driver (no
Spark plan at all): well-formed lines column-wise in Arrow and numpy, any other line through the
per-line checks that give its reason.

Input: ``raw_lines_to_arrow`` of a micro-batch (``value`` made valid UTF-8, ``valid_utf8``, the
line's position). Output (``parse_lines``): one row per data line of an accepted file and one row
per rejected file, with ``PARSED_COLUMNS``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
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

VALID_UTF8 = "valid_utf8"
# A header with more columns than this rejects its file.
MAX_FIELDS = 256
TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?$"
POSITION_COLUMNS = (SOURCE_FILE, "file_block_start", "line_id")
PARSED_COLUMNS = ("value", *POSITION_COLUMNS, USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TS, REASON, REJECTED_LINES)
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_CSV_FIELD = re.compile(r'(?:^|,)("(?:[^"]|"")*"|[^,]*)')
_INT32_MAX = 2**31 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def raw_lines_to_arrow(lines: DataFrame) -> pa.Table:
    """The lines of a micro-batch of ``activity_lines_stream`` (or the messages of
    ``activity_messages_stream``) on the driver, in one Spark job: the text made valid UTF-8
    (``valid_utf8`` says whether it was), its file, block and a line id that follows file order
    within a block (a message's offset)."""
    line_id = F.col("line_id") if "line_id" in lines.columns else F.monotonically_increasing_id()
    return lines.select(
        F.make_valid_utf8("value").alias("value"),
        F.is_valid_utf8("value").alias(VALID_UTF8),
        SOURCE_FILE,
        "file_block_start",
        line_id.alias("line_id"),
    ).toArrow()


def csv_split(line: str) -> list[str]:
    """The fields of a CSV line, quotes removed (``lib.ingest.parsing.csv_fields``)."""
    if '"' not in line:
        return line.split(",")
    fields = []
    for field in _CSV_FIELD.findall(line):
        if len(field) >= 2 and field.startswith('"') and field.endswith('"'):
            field = field[1:-1].replace('""', '"')
        fields.append(field)
    return fields


def _strip_spaces(text: str | None) -> str | None:
    # Spark's trim removes spaces only, not other white space.
    return None if text is None else text.strip(" ")


def _header_reason(fields: list[str]) -> str | None:
    if len(fields) > MAX_FIELDS:
        return f"too_many_columns: {len(fields)}, at most {MAX_FIELDS}"
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in fields]
    if missing:
        return "missing_columns: " + ", ".join(missing)
    duplicated = [c for c in REQUIRED_EVENT_COLUMNS if fields.count(c) > 1]
    if duplicated:
        return "duplicate_columns: " + ", ".join(duplicated)
    return None


def _id_field(raw: str | None, name: str) -> tuple[int | None, str | None]:
    text = _strip_spaces(raw)
    if not text:
        return None, f"missing_{name}"
    value = int(text) if _INTEGER.match(text) else None
    if value is None or not -(2**31) <= value <= _INT32_MAX:
        return None, f"bad_{name}: {raw}"
    if value <= 0:
        return value, f"non_positive_{name}: {text}"
    return value, None


def _event_type_field(raw: str | None) -> tuple[str | None, str | None]:
    normalized = None if raw is None else raw.strip(" ").lower()
    if not normalized:
        return normalized, f"missing_{EVENT_TYPE}"
    if normalized not in EVENT_TYPES:
        return normalized, f"unknown_event_type: {raw}"
    return normalized, None


_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


def _timestamp_field(raw: str | None) -> tuple[int | None, str | None]:
    """Microseconds since the epoch (UTC) of a ``YYYY-MM-DD HH:MM:SS[.ffffff]`` text."""
    text = _strip_spaces(raw)
    if not text:
        return None, f"missing_{TIMESTAMP}"
    if not _TIMESTAMP.match(text):
        return None, f"bad_timestamp: {raw}"
    try:
        moment = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    except ValueError:
        return None, f"bad_timestamp: {raw}"
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds, None


def _typed_line(fields: list[str], positions: dict[str, int]) -> tuple:
    """(user_id, item_id, event_type, event_ts micros, reason) of an accepted line's fields."""

    def raw(name: str) -> str | None:
        pos = positions[name]
        return fields[pos] if 0 <= pos < len(fields) else None

    return check_event(raw(USER_ID), raw(ITEM_ID), raw(EVENT_TYPE), raw(TIMESTAMP))


def check_event(user_id: str | None, item_id: str | None, event_type: str | None, timestamp: str | None) -> tuple:
    """(user_id, item_id, event_type, event_ts micros, reason) of one event's field texts, by the
    contract's rules; ``reason`` is None when the event is valid."""
    user, user_reason = _id_field(user_id, USER_ID)
    item, item_reason = _id_field(item_id, ITEM_ID)
    kind, type_reason = _event_type_field(event_type)
    moment, time_reason = _timestamp_field(timestamp)
    reasons = [r for r in (user_reason, item_reason, type_reason, time_reason) if r]
    return user, item, kind, moment, "; ".join(reasons) or None


# A well-formed line of a file with the standard header: parsed column-wise (Arrow and numpy) with
# no Python per line. Any other line (quotes, spaces, other case, a zero id, an impossible date)
# takes the per-line path, which gives the same values and every reason.
_STANDARD_POSITIONS = {c: i for i, c in enumerate(REQUIRED_EVENT_COLUMNS)}
_PLAIN_LINE = (
    r"^[0-9]{1,10},[0-9]{1,10},(" + "|".join(sorted(EVENT_TYPES)) + r"),"
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?$"
)


def _plain_lines(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array, np.ndarray]:
    """Of lines matching ``_PLAIN_LINE``: which hold valid values (ids 1 to 2**31 - 1, a real
    date and time), and their user, item, event type and event time in micros."""
    parts = pc.split_pattern(values, ",")
    user = pc.cast(pc.list_element(parts, 0), pa.int64()).to_numpy()
    item = pc.cast(pc.list_element(parts, 1), pa.int64()).to_numpy()
    stamp = pc.list_element(parts, 3)

    def number(start: int, stop: int) -> np.ndarray:
        return pc.cast(pc.utf8_slice_codeunits(stamp, start, stop), pa.int64()).to_numpy()

    year, month, day = number(0, 4), number(5, 7), number(8, 10)
    hour, minute, second = number(11, 13), number(14, 16), number(17, 19)
    fraction = pc.cast(pc.utf8_rpad(pc.utf8_slice_codeunits(stamp, 20, 26), 6, "0"), pa.int64()).to_numpy()
    good_month = (month >= 1) & (month <= 12)
    first_of_month = ((year - 1970) * 12 + np.where(good_month, month, 1) - 1).astype("datetime64[M]")
    days_in_month = ((first_of_month + 1).astype("datetime64[D]") - first_of_month.astype("datetime64[D]")).astype(
        np.int64
    )
    valid = (
        (user >= 1)
        & (user <= _INT32_MAX)
        & (item >= 1)
        & (item <= _INT32_MAX)
        & (year >= 1)
        & good_month
        & (day >= 1)
        & (day <= days_in_month)
        & (hour <= 23)
        & (minute <= 59)
        & (second <= 59)
    )
    days = first_of_month.astype("datetime64[D]").astype(np.int64) + day - 1
    moment = ((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + fraction
    return valid, user, item, pc.list_element(parts, 2), moment


def parse_lines(lines: pa.Table, max_line_chars: int = 4096, unsafe_files: dict[str, str] | None = None) -> pa.Table:
    """Parse the raw lines of ``raw_lines_to_arrow`` into typed events with a rejection ``reason``
    (null when valid); ``PARSED_COLUMNS``, in the order of ``lines``.

    :param unsafe_files: files rejected whole for where they are (path -> reason); their content
        is not kept (``value`` null).
    """
    unsafe_files = unsafe_files or {}
    value_array = lines.column("value").combine_chunks()
    files = lines.column(SOURCE_FILE).to_pandas()
    blocks = lines.column("file_block_start").to_numpy(zero_copy_only=False)
    line_ids = lines.column("line_id").to_numpy(zero_copy_only=False)
    utf8 = lines.column(VALID_UTF8).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.utf8_length(value_array), 0).to_numpy(zero_copy_only=False)
    non_blank = pc.fill_null(pc.not_equal(pc.utf8_trim(value_array, " "), ""), False).to_numpy(zero_copy_only=False)

    # Each file's header: the lowest line id of the block that starts at offset 0.
    in_first_block = pd.DataFrame({"file": files, "line": line_ids})[blocks == 0]
    header_row = in_first_block.groupby("file", sort=False)["line"].idxmin().to_dict()
    data_lines = pd.Series(non_blank).groupby(files.to_numpy(), sort=False).sum().to_dict()
    headers = {}
    for file, row in header_row.items():
        fields = [f.strip(" ").lower() for f in csv_split(value_array[row].as_py().removeprefix("\ufeff"))]
        reason = unsafe_files.get(file) or _header_reason(fields)
        positions = {c: fields.index(c) if c in fields else -1 for c in REQUIRED_EVENT_COLUMNS}
        headers[file] = (row, len(fields), positions, reason)

    is_header = np.zeros(len(files), bool)
    is_header[list(header_row.values())] = True
    standard = {f for f, (_, width, positions, reason) in headers.items() if reason is None and width == 4}
    standard = {f for f in standard if headers[f][2] == _STANDARD_POSITIONS}
    plain = (
        files.isin(standard).to_numpy()
        & ~is_header
        & utf8
        & (lengths <= max_line_chars)
        & pc.fill_null(pc.match_substring_regex(value_array, _PLAIN_LINE), False).to_numpy(zero_copy_only=False)
    )
    plain_rows = np.flatnonzero(plain)
    valid, user, item, event_type, moment = _plain_lines(value_array.take(plain_rows))
    fast_rows = plain_rows[valid]
    fast = {
        USER_ID: pa.array(user[valid], pa.int32()),
        ITEM_ID: pa.array(item[valid], pa.int32()),
        EVENT_TYPE: event_type.filter(pa.array(valid)),
        EVENT_TS: pa.array(moment[valid], pa.int64()),
    }

    slow = {c: [] for c in ("row", USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TS, REASON, REJECTED_LINES, "keep")}

    def emit(row, user, item, event_type, moment, reason, rejected, keep_value=True):
        for name, value in zip(slow, (row, user, item, event_type, moment, reason, rejected, keep_value)):
            slow[name].append(value)

    handled = np.zeros(len(files), bool)
    handled[fast_rows] = True
    for row in np.flatnonzero(~handled):
        file = files[row]
        header_at, width, positions, file_reason = headers.get(file, (None, None, None, None))
        if file_reason is not None:
            if row == header_at:
                emit(row, None, None, None, None, file_reason, data_lines.get(file, 0) - 1, file not in unsafe_files)
            continue
        if row == header_at or not non_blank[row]:
            continue
        if not utf8[row]:
            emit(row, None, None, None, None, "invalid_utf8", None)
        elif lengths[row] > max_line_chars:
            emit(
                row, None, None, None, None, f"line_too_long: {lengths[row]} characters, at most {max_line_chars}", None
            )
        elif positions is None:
            emit(row, None, None, None, None, "missing_columns: " + ", ".join(REQUIRED_EVENT_COLUMNS), None)
        else:
            fields = csv_split(value_array[row].as_py())
            user_id, item_id, kind, at, reason = _typed_line(fields, positions)
            if len(fields) != width:
                reason = f"field_count: expected {width} fields, got {len(fields)}"
            emit(row, user_id, item_id, kind, at, reason, None)

    rows = np.concatenate([fast_rows, np.array(slow["row"], np.int64)]).astype(np.int64)
    order = pa.array(np.argsort(rows, kind="stable"))
    kept = np.concatenate([np.ones(len(fast_rows), bool), np.array(slow["keep"], bool)])
    values = value_array.take(pa.array(rows))
    if not kept.all():
        values = pc.if_else(pa.array(kept), values, pa.nulls(len(values), pa.string()))

    def column(name: str, arrow_type) -> pa.Array:
        fast_part = fast.get(name, pa.nulls(len(fast_rows), arrow_type))
        return pa.concat_arrays([fast_part, pa.array(slow[name], arrow_type)]).take(order)

    taken = pa.array(rows[order])
    return pa.table(
        {
            "value": values.take(order),
            SOURCE_FILE: lines.column(SOURCE_FILE).take(taken),
            "file_block_start": lines.column("file_block_start").take(taken),
            "line_id": lines.column("line_id").take(taken),
            USER_ID: column(USER_ID, pa.int32()),
            ITEM_ID: column(ITEM_ID, pa.int32()),
            EVENT_TYPE: column(EVENT_TYPE, pa.string()),
            EVENT_TS: column(EVENT_TS, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            REASON: column(REASON, pa.string()),
            REJECTED_LINES: column(REJECTED_LINES, pa.int64()),
        }
    )


def json_field_text(value) -> str | None:
    """The field text a JSON value stands for: a string as it is, any other value as its JSON
    text (so 42 and "42" both parse, and ``{"a":1}`` is reported as what it is); null is missing."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _json_object(text: str) -> dict | None:
    """The JSON object of a message; None when it is not exactly one (duplicate keys included)."""
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def parse_messages(messages: pa.Table, max_message_chars: int = 4096) -> pa.Table:
    """Parse Kafka messages (``raw_lines_to_arrow`` of ``activity_messages_stream``) into events
    with a rejection ``reason``: ``PARSED_COLUMNS``, one row per message, in order.

    A message is a JSON object (duplicate keys reject it) with the keys ``user_id``, ``item_id``,
    ``event_type``, ``timestamp``; other keys are ignored. Values follow the CSV rules
    (``check_event``) on their field text (``json_field_text``). Reason codes besides the CSV
    line's: ``not_a_json_object`` and ``message_too_long``.
    """
    typed = {c: [] for c in (USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TS, REASON)}
    texts = messages.column("value").to_pylist()
    for text, utf8 in zip(texts, messages.column(VALID_UTF8).to_pylist()):
        event, reason = None, None
        if text is None:
            reason = "not_a_json_object: empty message"
        elif not utf8:
            reason = "invalid_utf8"
        elif len(text) > max_message_chars:
            reason = f"message_too_long: {len(text)} characters, at most {max_message_chars}"
        else:
            document = _json_object(text)
            if document is None:
                reason = "not_a_json_object"
            else:
                *event, reason = check_event(*(json_field_text(document.get(c)) for c in REQUIRED_EVENT_COLUMNS))
        values = event if event and reason is None else (None,) * 4
        for name, value in zip(typed, (*values, reason)):
            typed[name].append(value)
    return pa.table(
        {
            "value": messages.column("value"),
            **{c: messages.column(c) for c in POSITION_COLUMNS},
            USER_ID: pa.array(typed[USER_ID], pa.int32()),
            ITEM_ID: pa.array(typed[ITEM_ID], pa.int32()),
            EVENT_TYPE: pa.array(typed[EVENT_TYPE], pa.string()),
            EVENT_TS: pa.array(typed[EVENT_TS], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            REASON: pa.array(typed[REASON], pa.string()),
            REJECTED_LINES: pa.nulls(messages.num_rows, pa.int64()),
        }
    )


def valid_rows(parsed: pa.Table) -> pa.Table:
    """The rows of ``parse_lines`` that passed every check."""
    return parsed.filter(pc.is_null(parsed.column(REASON)))


def rejected_rows(parsed: pa.Table) -> pa.Table:
    """The rows of ``parse_lines`` that were rejected."""
    return parsed.filter(pc.is_valid(parsed.column(REASON)))
