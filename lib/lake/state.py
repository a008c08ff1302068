"""Session state between micro-batches: the open sessions, one immutable Parquet folder per
batch under the query's checkpoint (``<dir>/batch=<id>``).

Batch ``b`` reads exactly the state batch ``b - 1`` wrote, so a batch replayed after a crash
recomputes the same result whatever it had written before dying. A folder counts once its
``_SUCCESS`` marker exists; folders older than ``b - 1`` are deleted once ``b`` is written.
"""

from __future__ import annotations

import logging
import re

from pyspark.sql import DataFrame, SparkSession

from lib.core.fs import HadoopFS
from lib.core.schemas import SESSION_STATE_SCHEMA

log = logging.getLogger(__name__)

_BATCH_DIR = re.compile(r"^batch=(\d+)$")


class StateMissingError(RuntimeError):
    """The state a batch needs is gone: the checkpoint folder was damaged or partly deleted."""


class _BatchFolders:
    """One Parquet folder per batch under ``root`` (``<root>/batch=<id>``); a folder counts once
    its ``_SUCCESS`` marker exists."""

    def __init__(self, spark: SparkSession, root: str):
        self.spark = spark
        self.root = root.rstrip("/")
        self._fs = HadoopFS(spark)

    def _dir(self, batch_id: int) -> str:
        return f"{self.root}/batch={batch_id}"

    def _complete(self, batch_id: int) -> bool:
        return self._fs.exists(f"{self._dir(batch_id)}/_SUCCESS")

    def batches(self) -> list[int]:
        """Batch ids with a complete folder, ascending."""
        ids = []
        for name in self._fs.list_names(self.root):
            match = _BATCH_DIR.match(name)
            if match and self._complete(int(match.group(1))):
                ids.append(int(match.group(1)))
        return sorted(ids)

    def _delete(self, batch_id: int) -> None:
        self._fs.delete(self._dir(batch_id), recursive=True)


class SessionStateStore(_BatchFolders):
    def read_before(self, batch_id: int) -> DataFrame:
        """The open sessions as they were after batch ``batch_id - 1``."""
        previous = batch_id - 1
        if previous >= 0 and self._complete(previous):
            return self.spark.read.schema(SESSION_STATE_SCHEMA).parquet(self._dir(previous))
        if previous < 0:
            return self.spark.createDataFrame([], SESSION_STATE_SCHEMA)
        raise StateMissingError(
            f"session state of batch {previous} is missing under {self.root}: the checkpoint folder was "
            "changed by hand. Restart from scratch by deleting both paths.checkpoints and paths.lake."
        )

    def write(self, sessions: DataFrame, batch_id: int) -> None:
        """Store the open sessions after ``batch_id`` and drop state no replay can need."""
        sessions.coalesce(1).write.mode("overwrite").parquet(self._dir(batch_id))
        for old in self.batches():
            if old < batch_id - 1:
                self._delete(old)


class PendingUpdatesStore(_BatchFolders):
    """The live updates of batches that left them to a later batch (``lib.features.live_updates``), one
    Parquet folder per batch under the query's checkpoint (``<dir>/batch=<id>``).

    A replayed batch rewrites its folder with the same rows. Folders are deleted once a batch
    has folded them into the live tables; until then, a batch after a crash reads them again.
    """

    def write(self, updates: DataFrame, batch_id: int) -> None:
        updates.coalesce(1).write.mode("overwrite").parquet(self._dir(batch_id))

    def read(self, batch_ids: list[int]) -> DataFrame | None:
        """The updates of ``batch_ids`` (None for none)."""
        if not batch_ids:
            return None
        return self.spark.read.parquet(*(self._dir(b) for b in batch_ids))

    def delete_through(self, batch_id: int) -> None:
        for old in self.batches():
            if old <= batch_id:
                self._delete(old)
