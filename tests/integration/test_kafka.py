"""The Kafka source against a real single-node broker (scripts/kafka.sh's, started once for this
module on a free port and stopped by pid): exactly once across a kill -9 of the job and a
broker restart mid-stream, malformed and oversized messages quarantined with reasons, a backlog
that updates the live tables once, the faults a user meets first (no broker, no topic, a
message over the broker's limit) refused with the fix, and events POSTed to the API produced to
the topic and streamed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bench.benchmark import messages_processed
from lib.core.processes import free_port
from lib.ingest.generator import ActivityProfile, Catalogue, KafkaActivityWriter, simulate_events
from lib.ingest.kafka import KafkaError, create_topic, start_broker, stop_broker
from lib.lake.checkpoint import CheckpointError
from lib.lake.verify import check_profiles, read_manifest, verify
from lib.stream.query import run_available_now, start_stream
from tests.helpers import (
    ApiServer,
    batches_committed,
    generated_purchases,
    make_config,
    read,
    start_stream_job,
    wait_for_batches,
    write_config_file,
    write_manifest,
    write_purchases,
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kafka")
    started = start_broker(folder, free_port())
    yield started
    stop_broker(folder)


def kafka_config(root: Path, broker, topic: str, *overrides: str):
    return make_config(
        root, "source.kind=kafka", f"kafka.bootstrap_servers={broker.bootstrap}", f"kafka.topic={topic}", *overrides
    )


def kafka_toml(cfg, path: Path, extra: str = "") -> Path:
    kafka = f'[source]\nkind = "kafka"\n[kafka]\nbootstrap_servers = "{cfg.kafka.bootstrap_servers}"\n'
    kafka += f'topic = "{cfg.kafka.topic}"\nmax_offsets_per_trigger = {cfg.kafka.max_offsets_per_trigger}\n'
    return write_config_file(cfg, path, kafka + extra)


def producer(broker, topic: str, users: int = 40, items: int = 40, bad_share: float = 0.05) -> KafkaActivityWriter:
    events = simulate_events(Catalogue(num_users=users, num_items=items, seed=7), ActivityProfile())
    return KafkaActivityWriter(broker.bootstrap, topic, events, bad_share=bad_share, seed=7)


def test_exactly_once_across_kill_9_and_a_broker_restart_with_bad_messages_quarantined(spark, tmp_path, broker):
    topic = "activity-chaos"
    create_topic(broker.bootstrap, topic, partitions=2)
    cfg = kafka_config(tmp_path, broker, topic, "kafka.max_offsets_per_trigger=300")
    write_purchases(cfg.paths.purchases, generated_purchases(users=40, items=40, count=120))
    writer = producer(broker, topic)
    writer.write_batch(300)
    # A message over stream.max_line_chars (still under the broker's limit) is quarantined, not parsed.
    oversized = '{"user_id": 1, "item_id": 1, "event_type": "view", "timestamp": "2024-01-01 00:00:00", "pad": "%s"}'
    writer.produce([(oversized % ("x" * cfg.stream.max_line_chars), "message_too_long", None)])

    toml = kafka_toml(cfg, tmp_path / "pipeline.toml")
    log = tmp_path / "stream.log"

    def start() -> subprocess.Popen:
        return start_stream_job(toml, log)

    # kill -9 of the job's process group after its first micro-batch, with messages still arriving.
    job = start()
    wait_for_batches(cfg, job, 0, log)
    writer.write_batch(300)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()

    # Restarted, it resumes from its checkpoint; then the broker is stopped under it and started
    # again on the same folder and port, while the producer waits for it to come back.
    job = start()
    seen = batches_committed(cfg)
    wait_for_batches(cfg, job, seen, log)
    stop_broker(broker.folder)
    late_batch = threading.Thread(target=writer.write_batch, args=(300, 180.0))
    late_batch.start()
    time.sleep(5)
    assert job.poll() is None, "the job ended while the broker was down:\n" + log.read_text()[-3000:]
    start_broker(broker.folder, broker.port)
    late_batch.join()
    writer.close()
    seen = batches_committed(cfg)
    wait_for_batches(cfg, job, seen, log)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()

    # Whatever the job left, a catch-up run on the same checkpoint finishes; every message is in
    # enriched_events or quarantine exactly once, with the reason the generator expects, and the
    # closed sessions equal a batch recomputation (events behind the watermark when their batch
    # came dropped, as the stream must: with two partitions cut at different event times, some
    # are; a single clean run would see none late, so it is not the yardstick here).
    run_available_now(spark, cfg)
    checks = verify(spark, cfg, read_manifest(spark, write_manifest(writer.manifest, tmp_path / "manifest.jsonl")))
    assert all(c.ok for c in checks), checks
    counts = {c.table: c.actual for c in checks}
    assert counts["enriched_events"] == sum(1 for r in writer.manifest if r.expected_reason is None) > 800
    assert counts["quarantine"] == sum(1 for r in writer.manifest if r.expected_reason) > 10


def test_a_kafka_backlog_read_in_small_batches_is_exactly_once_and_as_the_verifier_predicts(spark, tmp_path, broker):
    topic = "activity-backlog"
    create_topic(broker.bootstrap, topic, partitions=2)
    writer = producer(broker, topic, users=12, items=30, bad_share=0.02)
    writer.write_batch(600)
    writer.close()
    cfg = kafka_config(tmp_path / "small", broker, topic, "kafka.max_offsets_per_trigger=200")
    write_purchases(cfg.paths.purchases, generated_purchases(users=12, items=30, count=40))

    batched = run_available_now(spark, cfg)

    assert len(batched.reports) >= 3
    assert sum(r.input_lines for r in batched.reports.values()) == len(writer.manifest)
    # The benchmark's drain check: the committed batches' end offsets count every message.
    assert messages_processed(Path(cfg.paths.checkpoint("stream"))) == len(writer.manifest)
    # Two partitions read 200 messages at a time: events arrive out of order across batches, and
    # the verifier replays the watermark over those batches to predict the sessions and drops.
    checks = verify(spark, cfg, read_manifest(spark, write_manifest(writer.manifest, tmp_path / "manifest.jsonl")))
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert check_profiles(spark, cfg).ok


def test_no_broker_or_no_topic_refuses_to_start_with_the_fix(spark, tmp_path, broker):
    nobody = make_config(
        tmp_path / "a", "source.kind=kafka", f"kafka.bootstrap_servers=127.0.0.1:{free_port()}", "kafka.topic=t"
    )
    with pytest.raises(KafkaError, match=r"no Kafka broker answers .*scripts/kafka.sh start"):
        start_stream(spark, nobody)
    missing = kafka_config(tmp_path / "b", broker, "no-such-topic")
    with pytest.raises(KafkaError, match=r"topic 'no-such-topic' does not exist"):
        start_stream(spark, missing)
    # A checkpoint of one source is not resumed with another.
    create_topic(broker.bootstrap, "other")
    run_available_now(spark, make_config(tmp_path / "c"))
    with pytest.raises(CheckpointError, match="was written reading 'files'"):
        start_stream(spark, kafka_config(tmp_path / "c", broker, "other"))


def test_a_message_over_the_brokers_size_limit_is_refused_with_the_reason(broker):
    create_topic(broker.bootstrap, "big")
    writer = producer(broker, "big", bad_share=0.0)
    with pytest.raises(RuntimeError, match="message.max.bytes"):
        writer.produce([("x" * 2_000_000, None, None)], timeout_s=30)
    assert writer.manifest == []
    writer.close()


def test_events_posted_to_the_api_are_produced_to_the_topic_and_streamed(spark, tmp_path, broker):
    topic = "activity-api"
    create_topic(broker.bootstrap, topic, partitions=2)
    cfg = kafka_config(tmp_path, broker, topic)
    write_purchases(cfg.paths.purchases, generated_purchases(users=10, items=10, count=20))
    with ApiServer(cfg, tmp_path, kafka_toml(cfg, tmp_path / "serve.toml")) as api:
        click = {"item_id": 4, "event_type": "click", "timestamp": "2024-02-01 10:00:00"}
        status, body = api.post("/users/3/events", click)
        assert status == 202 and body == {"accepted": 1, "destination": f"kafka://{topic}"}
        views = [{"user_id": u, "item_id": 5, "event_type": "view", "timestamp": "2024-02-01 10:01:00"} for u in (1, 2)]
        assert api.post("/events", views)[0] == 202
        assert api.post("/events", [*views, {"user_id": 1, "item_id": 5}])[0] == 422  # nothing of it produced
    run_available_now(spark, cfg)
    rows = read(spark, cfg, "enriched_events").select("user_id", "item_id", "event_type", "source_file").collect()
    served = sorted((r.user_id, r.item_id, r.event_type) for r in rows)
    assert served == [(1, 5, "view"), (2, 5, "view"), (3, 4, "click")]
    assert all(r.source_file.startswith(f"kafka://{topic}/") for r in rows)
