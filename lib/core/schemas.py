"""Column names, event types and the schemas of every input and table, defined once."""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# Input columns (CSV header names) and the columns the engine adds.
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
TIMESTAMP = "timestamp"
EVENT_TS = "event_ts"
SOURCE_FILE = "source_file"
INGESTED_AT = "ingested_at"
AVG_PURCHASE_AMOUNT = "avg_purchase_amount"
PAST_PURCHASES = "past_purchases"
PURCHASE_AMOUNT = "purchase_amount"
PURCHASE_DATE = "purchase_date"

REQUIRED_EVENT_COLUMNS = (USER_ID, ITEM_ID, EVENT_TYPE, TIMESTAMP)

VIEW, CLICK, ADD_TO_CART = "view", "click", "add_to_cart"
EVENT_TYPES = (VIEW, CLICK, ADD_TO_CART)

# Session columns.
SESSION_ID = "session_id"
SESSION_START = "session_start"
SESSION_END = "session_end"
NUM_EVENTS = "num_events"
NUM_VIEWS = "num_views"
NUM_CLICKS = "num_clicks"
NUM_ADD_TO_CART = "num_add_to_cart"
SESSION_LENGTH_S = "session_length_s"
AVG_TIME_GAP_S = "avg_time_gap_s"
LAST_EVENT = "last_event"
IS_OPEN = "is_open"
UPDATED_AT = "updated_at"
# quarantine: the rejected line as read, and why (``<code>: <detail>``; ``;`` between several).
RAW = "raw"
REASON = "reason"
REJECTED_LINES = "rejected_lines"
# stream_metrics: one row per micro-batch.
BATCH_ID = "batch_id"
STARTED_AT = "started_at"
INPUT_LINES = "input_lines"
VALID_ROWS = "valid_rows"
QUARANTINED_ROWS = "quarantined_rows"
LATE_ROWS_DROPPED = "late_rows_dropped"
SESSIONS_CLOSED = "sessions_closed"
OPEN_SESSIONS = "open_sessions"
WATERMARK = "watermark"
DURATION_S = "duration_s"
ROWS_PER_S = "rows_per_s"
STAGE_S = "stage_s"
SPARK_JOBS = "spark_jobs"
DELTA_COMMITS = "delta_commits"

# Table names (folders under paths.lake).
ENRICHED_EVENTS = "enriched_events"
SESSION_FEATURES = "session_features"
LIVE_SESSIONS = "live_sessions"
QUARANTINE = "quarantine"
STREAM_METRICS = "stream_metrics"
USER_PROFILES = "user_profiles"
RECOMMENDATIONS = "recommendations"
LIVE_RECOMMENDATIONS = "live_recommendations"
# Recommendation columns.
RANK = "rank"
SCORE = "score"
MODEL_VERSION = "model_version"
GENERATED_AT = "generated_at"
STRENGTH = "strength"
LAST_TS = "last_ts"

# Profile columns (and the running totals the stream keeps beside them).
NUM_SESSIONS = "num_sessions"
AVG_SESSION_LENGTH_S = "avg_session_length_s"
CLICK_THROUGH_RATE = "click_through_rate"
CART_RATE = "cart_rate"
FIRST_SEEN = "first_seen"
LAST_SEEN = "last_seen"
TOP_ITEMS = "top_items"
TOTAL_SESSION_MICROS = "total_session_micros"
ITEM_ENGAGEMENT = "item_engagement"

PURCHASES_SCHEMA = StructType(
    [
        StructField(USER_ID, IntegerType()),
        StructField(ITEM_ID, IntegerType()),
        StructField(PURCHASE_AMOUNT, DoubleType()),
        StructField(PURCHASE_DATE, DateType()),
    ]
)

# Where a line sits: its file, the file block it was read from, and its id in the batch.
LINE_POSITION_FIELDS = [
    StructField(SOURCE_FILE, StringType()),
    StructField("file_block_start", LongType()),
    StructField("line_id", LongType()),
]

# Raw lines as a micro-batch hands them over; line_id follows file order inside a file block.
RAW_LINES_SCHEMA = StructType([StructField("value", StringType())] + LINE_POSITION_FIELDS)

_EVENT_FIELDS = [
    StructField(USER_ID, IntegerType()),
    StructField(ITEM_ID, IntegerType()),
    StructField(EVENT_TYPE, StringType()),
    StructField(EVENT_TS, TimestampType()),
]

VALID_EVENTS_SCHEMA = StructType(_EVENT_FIELDS + LINE_POSITION_FIELDS)

ENRICHED_EVENTS_SCHEMA = StructType(
    _EVENT_FIELDS
    + [
        StructField(AVG_PURCHASE_AMOUNT, DoubleType()),
        StructField(PAST_PURCHASES, LongType()),
        StructField(SOURCE_FILE, StringType()),
        StructField(INGESTED_AT, TimestampType()),
    ]
)

# The latest events of a session, oldest first: the context of live re-ranking.
RECENT_EVENT_TYPE = StructType(
    [StructField(EVENT_TS, TimestampType()), StructField(ITEM_ID, IntegerType()), StructField(EVENT_TYPE, StringType())]
)

SESSION_FEATURES_SCHEMA = StructType(
    [
        StructField(SESSION_ID, StringType()),
        StructField(USER_ID, IntegerType()),
        StructField(SESSION_START, TimestampType()),
        StructField(SESSION_END, TimestampType()),
        StructField(NUM_EVENTS, LongType()),
        StructField(NUM_VIEWS, LongType()),
        StructField(NUM_CLICKS, LongType()),
        StructField(NUM_ADD_TO_CART, LongType()),
        StructField(SESSION_LENGTH_S, DoubleType()),
        StructField(AVG_TIME_GAP_S, DoubleType()),
        StructField(LAST_EVENT, StringType()),
        StructField(AVG_PURCHASE_AMOUNT, DoubleType()),
        StructField(PAST_PURCHASES, LongType()),
    ]
)

LIVE_SESSIONS_SCHEMA = StructType(
    SESSION_FEATURES_SCHEMA.fields + [StructField(IS_OPEN, BooleanType()), StructField(UPDATED_AT, TimestampType())]
)

QUARANTINE_SCHEMA = StructType(
    [
        StructField(SOURCE_FILE, StringType()),
        StructField(RAW, StringType()),
        StructField(REASON, StringType()),
        StructField(INGESTED_AT, TimestampType()),
        # Data lines of a file rejected whole (one quarantine row stands for the file); null otherwise.
        StructField(REJECTED_LINES, LongType()),
    ]
)

STREAM_METRICS_SCHEMA = StructType(
    [
        StructField(BATCH_ID, LongType()),
        StructField(STARTED_AT, TimestampType()),
        StructField(INPUT_LINES, LongType()),
        StructField(VALID_ROWS, LongType()),
        StructField(QUARANTINED_ROWS, LongType()),
        StructField(LATE_ROWS_DROPPED, LongType()),
        StructField(SESSIONS_CLOSED, LongType()),
        StructField(OPEN_SESSIONS, LongType()),
        StructField(WATERMARK, TimestampType()),
        StructField(DURATION_S, DoubleType()),
        StructField(ROWS_PER_S, DoubleType()),
        # Wall-clock seconds per stage of the batch (parse, fold, store, delta).
        StructField(STAGE_S, MapType(StringType(), DoubleType())),
        # The Spark jobs the batch ran (its job group's, the appends' included) and its Delta commits.
        StructField(SPARK_JOBS, LongType()),
        StructField(DELTA_COMMITS, LongType()),
    ]
)

USER_PROFILES_SCHEMA = StructType(
    [
        StructField(USER_ID, IntegerType()),
        StructField(NUM_SESSIONS, LongType()),
        StructField(NUM_EVENTS, LongType()),
        StructField(NUM_VIEWS, LongType()),
        StructField(NUM_CLICKS, LongType()),
        StructField(NUM_ADD_TO_CART, LongType()),
        StructField(AVG_SESSION_LENGTH_S, DoubleType()),
        StructField(CLICK_THROUGH_RATE, DoubleType()),
        StructField(CART_RATE, DoubleType()),
        StructField(FIRST_SEEN, TimestampType()),
        StructField(LAST_SEEN, TimestampType()),
        StructField(PAST_PURCHASES, LongType()),
        StructField(AVG_PURCHASE_AMOUNT, DoubleType()),
        StructField(TOP_ITEMS, ArrayType(IntegerType())),
        StructField(UPDATED_AT, TimestampType()),
        # Running totals the stream folds each micro-batch into (sum of session lengths in
        # microseconds, engagement per item): they make the update exact and incremental.
        StructField(TOTAL_SESSION_MICROS, LongType()),
        StructField(ITEM_ENGAGEMENT, MapType(IntegerType(), DoubleType())),
    ]
)

# user-item pairs, one per pair: the strongest signal and when it was last seen.
INTERACTIONS_SCHEMA = StructType(
    [
        StructField(USER_ID, IntegerType()),
        StructField(ITEM_ID, IntegerType()),
        StructField(STRENGTH, DoubleType()),
        StructField(LAST_TS, TimestampType()),
    ]
)

RECOMMENDATIONS_SCHEMA = StructType(
    [
        StructField(USER_ID, IntegerType()),
        StructField(RANK, IntegerType()),
        StructField(ITEM_ID, IntegerType()),
        StructField(SCORE, DoubleType()),
        StructField(MODEL_VERSION, StringType()),
        StructField(GENERATED_AT, TimestampType()),
    ]
)

LIVE_RECOMMENDATIONS_SCHEMA = StructType(RECOMMENDATIONS_SCHEMA.fields + [StructField(SESSION_ID, StringType())])

# The contract's user_profiles columns (the table also keeps running totals for the stream).
PROFILE_COLUMNS = USER_PROFILES_SCHEMA.fieldNames()[: USER_PROFILES_SCHEMA.fieldNames().index(UPDATED_AT) + 1]

# Every table of the lake with its schema, in the order tools list them: the one registry the
# stream (which creates them all), the catalog, the verifier, the report and the benchmark read.
TABLE_SCHEMAS = {
    ENRICHED_EVENTS: ENRICHED_EVENTS_SCHEMA,
    SESSION_FEATURES: SESSION_FEATURES_SCHEMA,
    LIVE_SESSIONS: LIVE_SESSIONS_SCHEMA,
    QUARANTINE: QUARANTINE_SCHEMA,
    STREAM_METRICS: STREAM_METRICS_SCHEMA,
    USER_PROFILES: USER_PROFILES_SCHEMA,
    RECOMMENDATIONS: RECOMMENDATIONS_SCHEMA,
    LIVE_RECOMMENDATIONS: LIVE_RECOMMENDATIONS_SCHEMA,
}
TABLES = tuple(TABLE_SCHEMAS)
# The tables only the stream writes (jobs/train.py rewrites recommendations whole).
STREAM_TABLES = tuple(name for name in TABLES if name != RECOMMENDATIONS)
