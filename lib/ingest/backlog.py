"""What a stream's checkpoint says it has read: the file source's log (which batch read which
file) and the Kafka offsets of each batch, read on the driver without Spark (the verifier, the
model's event cut-off and the benchmark use them)."""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import unquote, urlparse

from lib.core.fs import HadoopFS, LocalFS

log = logging.getLogger(__name__)

SOURCE_LOG = "sources/0"
OFFSET_LOG = "offsets"
_LOG_FILE = re.compile(r"^(\d+)(\.compact)?$")


def path_key(path: str) -> str:
    """A file's path as both the source log (``file:///x``) and a listing (``file:/x``) name it."""
    return unquote(urlparse(path).path)


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


def batch_end_offsets(text: str) -> dict[int, int]:
    """Per partition, the offset a Kafka batch read up to (exclusive), from its entry in the
    query's offset log: a version line, the batch's metadata, then the source's offsets as
    ``{"<topic>": {"<partition>": offset}}``."""
    lines = text.splitlines()
    if len(lines) < 3:
        return {}
    return {int(p): int(offset) for topic in json.loads(lines[2]).values() for p, offset in topic.items()}
