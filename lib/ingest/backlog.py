"""What an availableNow run has still to read: files of the file source, messages of Kafka.

An availableNow run reads the input present when it starts, ``stream.max_files_per_trigger``
files or ``kafka.max_offsets_per_trigger`` messages per micro-batch. A batch that knows more
input waits may leave the work only the end state needs (profiles, live sessions, live
recommendations) to a later batch of the same run (``lib.stream.query``).

The answer may only err on one side: input counted as waiting must be input the run will read,
or the run would end with that work undone (``SessionBatchWriter.finish_run`` catches that
case too). So only what is listed before the query starts counts:
- files: the regular, visible files in the folder, less those the file source's log under the
  checkpoint records as read, less those the source's ``maxFileAge`` (7 days behind the newest
  file, Spark's default, which streamrec keeps) skips;
- Kafka: each partition's end offset then, less the batch's end offset in the query's offset
  log. The query takes its own end offsets when it starts, later: never fewer messages.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import unquote, urlparse

from pyspark.sql import SparkSession

from lib.core.fs import HadoopFS, LocalFS

log = logging.getLogger(__name__)

SOURCE_LOG = "sources/0"
OFFSET_LOG = "offsets"
COMMIT_LOG = "commits"
MAX_FILE_AGE_MS = 7 * 24 * 3600 * 1000
_LOG_FILE = re.compile(r"^(\d+)(\.compact)?$")


def path_key(path: str) -> str:
    """A file's path as both the source log (``file:///x``) and a listing (``file:/x``) name it."""
    return unquote(urlparse(path).path)


def is_input_name(name: str) -> bool:
    """Whether the file source reads a file of this name (it skips ``.x``, ``_x``, ``x._COPYING_``)."""
    return not (name.startswith((".", "_")) or name.endswith("._COPYING_"))


def _entries(text: str) -> list[dict]:
    # The first line of a file of the source log is the log's version, "v1".
    return [json.loads(line) for line in text.splitlines()[1:] if line.strip()]


def logged_files(text: str) -> list[tuple[str, int]]:
    """``(path key, modification time in ms)`` of each entry of one file of the source log."""
    return [(path_key(entry["path"]), int(entry["timestamp"])) for entry in _entries(text)]


def _source_log(fs: HadoopFS | LocalFS, log_dir: str) -> list[tuple[int, str]]:
    """``(batch id, text)`` of every file of a file source's log (``<checkpoint>/sources/0``); a
    compacted one (``<id>.compact``) holds the entries of every batch up to its id."""
    texts = []
    for name in fs.list_names(log_dir):
        entry = _LOG_FILE.match(name)
        if entry:
            texts.append((int(entry[1]), fs.read_text(f"{log_dir}/{name}") or "v1"))
    return texts


def read_by_source_log(fs: HadoopFS | LocalFS, log_dir: str) -> tuple[dict[str, int], int]:
    """What a file source's log records as read: ``{path key: modification time in ms}``, and
    the last batch id with an entry (-1: none)."""
    read: dict[str, int] = {}
    last = -1
    for batch_id, text in _source_log(fs, log_dir):
        read.update(logged_files(text))
        last = max(last, batch_id)
    return read, last


def batch_of_files(fs: HadoopFS | LocalFS, log_dir: str) -> dict[str, int]:
    """``{path key: id of the micro-batch that read the file}``, from a file source's log."""
    return {
        path_key(entry["path"]): int(entry["batchId"])
        for _, text in _source_log(fs, log_dir)
        for entry in _entries(text)
    }


def files_committed(fs: HadoopFS | LocalFS, checkpoint: str, through_batch: int | None = None) -> set[str]:
    """Path keys of the files a file-source query has read in its committed micro-batches up to
    ``through_batch`` (default: all of them); a batch planned but not committed is left out."""
    checkpoint = checkpoint.rstrip("/")
    if through_batch is None:
        through_batch = max((int(n) for n in fs.list_names(f"{checkpoint}/{COMMIT_LOG}") if n.isdigit()), default=-1)
    return {path for path, batch in batch_of_files(fs, f"{checkpoint}/{SOURCE_LOG}").items() if batch <= through_batch}


class FileBacklog:
    """Created before the availableNow query starts; asked after each batch's source log entry exists."""

    def __init__(self, spark: SparkSession, events_dir: str, checkpoint: str):
        self._fs = HadoopFS(spark)
        self._log_dir = f"{checkpoint.rstrip('/')}/{SOURCE_LOG}"
        read, _ = read_by_source_log(self._fs, self._log_dir)
        listed = [(path_key(path), modified) for path, modified in self._fs.list_files(events_dir)]
        listed = [(key, modified) for key, modified in listed if is_input_name(key.rsplit("/", 1)[-1])]
        newest = max([m for _, m in listed] + list(read.values()), default=0)
        self._waiting = {key for key, modified in listed if key not in read and modified >= newest - MAX_FILE_AGE_MS}
        log.info("%d file(s) wait to be read in this run", len(self._waiting))

    def waiting_after(self, batch_id: int) -> int:
        """How many files the run has still to read once batch ``batch_id`` has read its own."""
        if not self._waiting:
            return 0
        for name in (str(batch_id), f"{batch_id}.compact"):
            text = self._fs.read_text(f"{self._log_dir}/{name}")
            if text is not None:
                self._waiting.difference_update(key for key, _ in logged_files(text))
                return len(self._waiting)
        log.warning("no source log entry for batch %d under %s; not deferring any more work", batch_id, self._log_dir)
        self._waiting.clear()
        return 0


def batch_end_offsets(text: str) -> dict[int, int]:
    """Per partition, the offset a Kafka batch read up to (exclusive), from its entry in the
    query's offset log: a version line, the batch's metadata, then the source's offsets as
    ``{"<topic>": {"<partition>": offset}}``."""
    lines = text.splitlines()
    if len(lines) < 3:
        return {}
    return {int(p): int(offset) for topic in json.loads(lines[2]).values() for p, offset in topic.items()}


class KafkaBacklog:
    """Created before the availableNow query starts, from the topic's end offsets
    (``lib.ingest.kafka.end_offsets``); asked after each batch's offset log entry exists."""

    def __init__(self, spark: SparkSession, checkpoint: str, end_offsets: dict[int, int]):
        self._fs = HadoopFS(spark)
        self._log_dir = f"{checkpoint.rstrip('/')}/{OFFSET_LOG}"
        self._end = dict(end_offsets)

    def waiting_after(self, batch_id: int) -> int:
        """How many messages the run has still to read once batch ``batch_id`` has read its own."""
        if not self._end:
            return 0
        text = self._fs.read_text(f"{self._log_dir}/{batch_id}")
        if text is None:
            log.warning("no offset log entry for batch %d under %s; deferring no more work", batch_id, self._log_dir)
            self._end.clear()
            return 0
        # A partition missing from the entry counts as read: the error may only be to fold early.
        reached = batch_end_offsets(text)
        waiting = sum(max(0, end - reached.get(p, end)) for p, end in self._end.items())
        if not waiting:
            self._end.clear()
        return waiting
