"""The typed config: defaults, overrides, durations, and errors that say how to fix them."""

import os

import pytest

from lib.core.config import ConfigError, config_toml, load_config, parse_duration


def test_defaults_match_the_contract():
    cfg = load_config()
    assert cfg.paths.events_dir == os.path.abspath("data/stream/incoming")
    assert cfg.paths.lake == os.path.abspath("data/lake")
    assert cfg.stream.max_files_per_trigger == 1
    assert cfg.stream.trigger_interval_seconds == 1.0
    assert cfg.sessions.gap_seconds == 1800.0
    assert cfg.sessions.watermark_seconds == 600.0
    assert (cfg.recommend.top_k, cfg.recommend.exclude_seen) == (10, True)


def test_overrides_and_uris():
    cfg = load_config(
        None, ["stream.max_files_per_trigger=4", "paths.lake=hdfs://nn:8020/lake", "recommend.exclude_seen=false"]
    )
    assert cfg.stream.max_files_per_trigger == 4
    assert cfg.paths.lake == "hdfs://nn:8020/lake"
    assert cfg.paths.table("enriched_events") == "hdfs://nn:8020/lake/enriched_events"
    assert cfg.recommend.exclude_seen is False


@pytest.mark.parametrize(
    "text, seconds",
    [("30 minutes", 1800), ("1 second", 1), ("500 ms", 0.5), ("2h", 7200), ("1.5 min", 90), ("1 day", 86400)],
)
def test_durations(text, seconds):
    assert parse_duration(text, "k") == seconds


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sessions.gap=30 minuets"], "sessions.gap"),
        (["stream.max_files_per_trigger=0"], "max_files_per_trigger must be >= 1"),
        (["stream.max_files_per_trigger=many"], "whole number"),
        (["stream.nope=1"], "unknown key"),
        (["nosection"], "section.key=value"),
        (["source.kind=socket"], "source.kind = 'socket' is unknown"),
        (["kafka.starting_offsets=newest"], "kafka.starting_offsets"),
        (["kafka.max_offsets_per_trigger=-1"], "max_offsets_per_trigger must be >= 0"),
        (["lake.checkpoint_interval=0"], "checkpoint_interval must be >= 1"),
        (["source.kind=kafka", "kafka.topic="], "needs kafka.bootstrap_servers and kafka.topic"),
    ],
)
def test_invalid_config_is_refused_with_a_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_unknown_section_in_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[stream]\nmax_files_per_trigger = 2\n[oops]\nx = 1\n")
    with pytest.raises(ConfigError, match="unknown config section"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_compaction_takes_the_most_fragmented_stream_table_every_n_slow_passes_and_can_be_off():
    from lib.core.schemas import STREAM_TABLES
    from lib.stream.slow import COMPACTED_TABLES, due, table_to_compact

    assert [b for b in range(0, 10) if due(b, 3)] == [3, 6, 9]
    assert not any(due(b, 0) for b in range(0, 10))
    assert (
        table_to_compact({"enriched_events": 5, "session_features": 9, "stream_metrics": 9, "live_sessions": 2})
        == "session_features"
    )
    assert table_to_compact({t: 4 for t in COMPACTED_TABLES}) == COMPACTED_TABLES[0]
    assert table_to_compact({"stream_metrics": 1, "quarantine": 0}) is None  # nothing to bin-pack
    assert table_to_compact({"recommendations": 50}) is None
    assert "recommendations" not in COMPACTED_TABLES  # rewritten by train.py, maybe concurrently
    assert sorted(COMPACTED_TABLES) == sorted(STREAM_TABLES)  # every table only the stream writes


def test_kafka_source_and_its_consumer_options_from_file_and_overrides(tmp_path):
    path = tmp_path / "kafka.toml"
    path.write_text(
        '[source]\nkind = "kafka"\n[kafka]\nbootstrap_servers = "b1:9092,b2:9092"\ntopic = "clicks"\n'
        '[kafka.options]\n"security.protocol" = "SSL"\n"check.crcs" = true\n'
    )
    cfg = load_config(path, ["kafka.options.fetch.max.bytes=1048576", "kafka.max_offsets_per_trigger=5000"])
    assert (cfg.source.kind, cfg.kafka.bootstrap_servers, cfg.kafka.topic) == ("kafka", "b1:9092,b2:9092", "clicks")
    assert cfg.kafka.options == {"security.protocol": "SSL", "check.crcs": "true", "fetch.max.bytes": "1048576"}
    assert (cfg.kafka.starting_offsets, cfg.kafka.max_offsets_per_trigger) == ("earliest", 5000)
    path.write_text('[kafka]\noptions = "SSL"\n')
    with pytest.raises(ConfigError, match="kafka.options must be a table"):
        load_config(path)


def test_a_config_written_as_toml_loads_back_with_its_values(tmp_path):
    path = tmp_path / "pipeline.toml"
    lake = tmp_path / 'a "quoted" lake'
    path.write_text(
        config_toml({"paths": {"lake": lake}, "stream": {"max_files_per_trigger": 3, "slow_interval": "5 seconds"}})
    )
    cfg = load_config(path)
    assert cfg.paths.lake == str(lake)
    assert cfg.stream.max_files_per_trigger == 3 and cfg.stream.slow_interval_seconds == 5
