"""The events query: a streaming query of its own over the watched folder that writes
``enriched_events`` and ``quarantine`` and nothing else (``stream.separate_events_query``).

A file's events are then readable seconds after it lands, whatever the main query
(``lib.stream.query``: sessions, profiles, recommendations, the online store) is busy with. Both
queries read every file, each from its own checkpoint, so each is exactly once on its own; the
main query parses the files again and leaves these two tables alone.
"""

from __future__ import annotations

import logging
import time

from pyspark.sql import DataFrame, SparkSession

from lib.core.config import EVENTS_CHECKPOINT, Config, micros
from lib.ingest.sources import read_purchases
from lib.lake.sinks import BatchSink
from lib.stream.gate import GatedBatchWriter
from lib.stream.steps import BatchContext, Persisted, micros_literal, read_batch, write_enriched, write_quarantine

log = logging.getLogger(__name__)

EVENTS_QUERY_NAME = "streamrec_events"


class EventsBatchWriter(GatedBatchWriter):
    """The ``foreachBatch`` function of the events query."""

    def __init__(self, spark: SparkSession, cfg: Config, app_id: str | None = None):
        super().__init__(spark, cfg.paths.checkpoint(EVENTS_CHECKPOINT), app_id)
        self.cfg = cfg

    def write_batch(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        with Persisted() as persisted:
            ctx = BatchContext(
                spark=self.spark,
                cfg=self.cfg,
                batch_id=batch_id,
                sink=BatchSink(self.spark, self.app_id()),
                store=None,
                purchases=read_purchases(self.spark, self.cfg.paths.purchases),  # read once: not kept
                ingested_at=micros_literal(micros(time.time())),
                keep=persisted.keep,
            )
            batch = read_batch(ctx, batch_df, None)
            write_enriched(ctx, batch)
            write_quarantine(ctx, batch)
        log.info(
            "events batch %d: %d rows, %d quarantined, in %.2f s",
            batch_id,
            batch.rows,
            batch.quarantined_rows,
            time.monotonic() - started,
        )
