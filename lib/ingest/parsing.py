"""The contract's rules as Spark columns, for the readers of the lake (the verifier, the report);
the micro-batch parses on the driver (``lib.ingest.line_parsing``)."""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from lib.ingest.line_parsing import TIMESTAMP_PATTERN


def parse_timestamp(raw: Column) -> Column:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` (or with a ``T``) in the session time zone (UTC) to a
    timestamp; null if invalid."""
    text = F.trim(raw)
    # The pattern fixes the shape (no zone, at most 6 fraction digits); the cast then checks the
    # calendar (no February 30, no hour 24) and costs less than a parse driven by a format.
    return F.when(text.rlike(TIMESTAMP_PATTERN), text.try_cast("timestamp"))


def reason_code(reason: Column) -> Column:
    """The code of a quarantine ``reason``: the part of its first reason before the colon."""
    return F.split(F.split(reason, ";")[0], ":")[0]
