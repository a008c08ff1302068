"""What the backlog counts as waiting: the names the file source reads, and its log's entries."""

import json

from lib.backlog import is_input_name, logged_files, path_key


def test_the_names_the_file_source_skips_are_not_input():
    assert is_input_name("activity-000001.csv")
    assert not is_input_name(".activity-000001.csv")  # being written, renamed when complete
    assert not is_input_name("_SUCCESS")
    assert not is_input_name("activity-000001.csv._COPYING_")  # hdfs dfs -put in progress


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
