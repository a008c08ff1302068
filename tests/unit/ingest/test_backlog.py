"""What a checkpoint says was read: the file source log's entries and a Kafka batch's end offsets."""

import json

from lib.core.fs import LocalFS
from lib.ingest.backlog import (
    batch_end_offsets,
    batch_of_files,
    logged_files,
    path_key,
    read_by_source_log,
)


def test_a_log_file_and_a_listing_name_a_file_alike():
    assert path_key("file:///data/in/a%20b.csv") == path_key("file:/data/in/a b.csv") == "/data/in/a b.csv"
    assert path_key("hdfs://nn:8020/in/a.csv") == "/in/a.csv"


def test_log_entries_after_the_version_line():
    entries = [
        {"path": "file:///in/a.csv", "timestamp": 1000, "batchId": 3},
        {"path": "file:///in/b.csv", "timestamp": 2000, "batchId": 3},
    ]
    text = "\n".join(["v1", *map(json.dumps, entries)]) + "\n"
    assert logged_files(text) == [("/in/a.csv", 1000), ("/in/b.csv", 2000)]
    assert logged_files("v1\n") == []


def offset_log_entry(offsets: dict[str, dict[str, int]]) -> str:
    metadata = {"batchWatermarkMs": 0, "batchTimestampMs": 1700000000000, "conf": {}}
    return "\n".join(["v1", json.dumps(metadata), json.dumps(offsets)])


def test_the_source_log_read_whole_gives_every_file_read_and_the_last_batch(tmp_path):
    def entry(path, ms):
        return json.dumps({"path": f"file://{path}", "timestamp": ms, "batchId": 0})

    log_dir = tmp_path / "sources" / "0"
    assert read_by_source_log(LocalFS(), str(log_dir)) == ({}, -1)  # no batch planned yet
    log_dir.mkdir(parents=True)
    (log_dir / "9.compact").write_text("\n".join(["v1", entry("/in/a.csv", 1), entry("/in/b.csv", 2)]))
    (log_dir / "10").write_text("\n".join(["v1", entry("/in/c.csv", 3)]))
    (log_dir / ".10.tmp").write_text("v1\n" + entry("/in/not-yet.csv", 4))  # a write in progress
    read, last = read_by_source_log(LocalFS(), str(log_dir))
    assert read == {"/in/a.csv": 1, "/in/b.csv": 2, "/in/c.csv": 3}
    assert last == 10


def test_each_file_is_of_the_batch_that_read_it(tmp_path):
    def entry(path, batch_id):
        return json.dumps({"path": f"file://{path}", "timestamp": 1, "batchId": batch_id})

    checkpoint = tmp_path / "stream"
    assert batch_of_files(LocalFS(), str(checkpoint / "sources" / "0")) == {}
    log_dir = checkpoint / "sources" / "0"
    log_dir.mkdir(parents=True)
    # A compacted entry holds the files of every batch up to its id, each with its own batch.
    (log_dir / "9.compact").write_text("\n".join(["v1", entry("/in/a.csv", 0), entry("/in/b.csv", 9)]))
    (log_dir / "10").write_text("\n".join(["v1", entry("/in/c.csv", 10)]))
    assert batch_of_files(LocalFS(), str(log_dir)) == {"/in/a.csv": 0, "/in/b.csv": 9, "/in/c.csv": 10}


def test_a_kafka_batch_end_offsets_come_from_its_offset_log_entry():
    assert batch_end_offsets(offset_log_entry({"activity": {"0": 120, "1": 80}})) == {0: 120, 1: 80}
    assert batch_end_offsets("v1\n{}") == {}  # an entry without the source's offsets
