"""What every ``foreachBatch`` writer of the stream shares: a stop between micro-batches, never
inside one, and an id that is stable across restarts (the exactly-once marker of its commits).
"""

from __future__ import annotations

import json
import logging
import threading

from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


class StopRequested(RuntimeError):
    """Ends a micro-batch that started after a stop was requested, before it writes anything.

    Its message has the shape Spark's stream execution recognises as "interrupted by stop()"
    in a Python ``foreachBatch`` (a Py4J call that raised ``InterruptedException``, SPARK-39218),
    so the query ends as stopped, not failed, and nothing logs an error. It is kept short: Spark
    matches it with a regular expression that overflows the stack on a long Java trace.
    """

    MESSAGE = (
        "py4j.protocol.Py4JJavaError: An error occurred while calling z:java.lang.Thread.sleep.\n"
        ": java.lang.InterruptedException: stop requested; batch {batch_id} is left for the next run"
    )


class _QuietStopRequested(logging.Filter):
    """Drops py4j's ERROR report of a ``StopRequested``: a planned stop is not a failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StopRequested))


logging.getLogger("py4j.clientserver").addFilter(_QuietStopRequested())


class GatedBatchWriter:
    """A ``foreachBatch`` callable, ``writer(batch_df, batch_id)``, that a stop request never
    interrupts halfway: subclasses write one batch in ``write_batch``."""

    def __init__(self, spark: SparkSession, checkpoint: str, app_id: str | None = None):
        self.spark = spark
        self.checkpoint = checkpoint
        self._app_id = app_id
        self.stop_requested = threading.Event()
        # Guards stop_requested against a batch starting: a batch is either running (and the
        # stop waits for it) or saw the request (and ends without writing).
        self._batch_gate = threading.Condition()
        self._batch_running = False
        self.parked_for_stop = threading.Event()  # a batch waits in _end_for_stop

    def app_id(self) -> str:
        """The streaming query's id, persisted in its checkpoint: stable across restarts."""
        if self._app_id is None:
            metadata = self.spark.read.text(f"{self.checkpoint}/metadata").first()[0]
            self._app_id = f"streamrec-{json.loads(metadata)['id']}"
        return self._app_id

    def write_batch(self, batch_df: DataFrame, batch_id: int) -> None:
        raise NotImplementedError

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        with self._batch_gate:
            stopping = self.stop_requested.is_set()
            self._batch_running = not stopping
        if stopping:
            self._end_for_stop(batch_id)
        try:
            self.write_batch(batch_df, batch_id)
        finally:
            with self._batch_gate:
                self._batch_running = False
                self._batch_gate.notify_all()

    def request_stop(self) -> None:
        """From now on a starting batch writes nothing (see ``_end_for_stop``)."""
        with self._batch_gate:
            self.stop_requested.set()

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Wait for the running batch, if any, to return; True when none runs."""
        with self._batch_gate:
            return self._batch_gate.wait_for(lambda: not self._batch_running, timeout_s)

    def _end_for_stop(self, batch_id: int) -> None:
        """Wait, writing nothing, for ``query.stop()`` to interrupt this (the stream execution)
        thread, then end the batch as interrupted: it is planned again, whole, on the next start.
        Python's calls into the JVM from ``foreachBatch`` run on that thread, so a sleep there
        is where the interrupt arrives."""
        self.parked_for_stop.set()
        try:
            while True:
                self.spark._jvm.java.lang.Thread.sleep(100)
        except Exception:  # the InterruptedException, through Py4J
            raise StopRequested(StopRequested.MESSAGE.format(batch_id=batch_id)) from None
