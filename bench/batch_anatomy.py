"""Where a micro-batch's time goes: the main query's batch writer (``SessionBatchWriter``) on
static batches of input files, continuing a copy of a lake the stream wrote, with Spark's event
log on. Per batch it prints the stage seconds, the Spark jobs (how many, how long any of them
was running, the CPU their tasks used), what the JVM spent beside them (its JIT compilers' time,
garbage collection, the classes Spark generated and compiled with Janino) and when the online store
received the batch's sessions, profiles and live recommendations, in seconds from the batch's start.
At the end it prints the Catalyst rules (analysis, optimization, Delta's own) that took longest over
every batch but the first, summed over the driver's threads (``RuleExecutor``'s metrics).

The same input gives the same batches, so two checkouts can be compared batch by batch, which
the freshness runs of ``make bench`` (a live generator, 5 or 6 batches in 2 minutes) cannot do
within their run-to-run spread::

    .venv/bin/python bench/batch_anatomy.py --seed /tmp/sb-base/seed \\
        --files /tmp/sb-base/fresh_2000/incoming --files-per-batch 10 --batches 10

``--seed`` is a run folder of ``bench/benchmark.py`` (``pipeline.toml``, lake, checkpoints,
online store), e.g. the model seed of ``--reuse-seed``; it is copied to ``--work`` first and
left as it was. The first batch of a JVM is its slowest: compare the later ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.core.config import STREAM_CHECKPOINT, load_config  # noqa: E402
from lib.core.fs import LocalFS  # noqa: E402
from lib.core.spark import get_spark  # noqa: E402
from lib.ingest.backlog import COMMIT_LOG  # noqa: E402
from lib.ingest.sources import with_line_source  # noqa: E402
from lib.stream.query import SessionBatchWriter, ensure_tables  # noqa: E402

# The store's writes timed per batch: when each kind of document reached it.
STORE_WRITES = {"put_sessions": "sessions", "put_profiles": "profiles", "put_live_recommendations": "live recs"}


@dataclass
class Window:
    batch_id: int
    started: float  # epoch seconds
    ended: float = 0.0
    stored: dict[str, float] = field(default_factory=dict)  # kind -> seconds from the start
    jvm: JvmCounters | None = None  # what the JVM spent during the batch


@dataclass(frozen=True)
class JvmCounters:
    """Cumulative JVM counters of the driver: JIT compilers' time, GC time, Janino compilations,
    time in Catalyst's rules."""

    jit_ms: int
    gc_ms: int
    generated_classes: int
    rule_ns: int

    @classmethod
    def read(cls, spark) -> JvmCounters:
        jvm = spark.sparkContext._jvm
        management = jvm.java.lang.management.ManagementFactory
        return cls(
            jit_ms=management.getCompilationMXBean().getTotalCompilationTime(),
            gc_ms=sum(bean.getCollectionTime() for bean in management.getGarbageCollectorMXBeans()),
            generated_classes=jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount(),
            rule_ns=rule_executor(spark).getCurrentMetrics().time(),
        )

    def __sub__(self, earlier: JvmCounters) -> JvmCounters:
        return JvmCounters(
            self.jit_ms - earlier.jit_ms,
            self.gc_ms - earlier.gc_ms,
            self.generated_classes - earlier.generated_classes,
            self.rule_ns - earlier.rule_ns,
        )


def rule_executor(spark):
    return spark.sparkContext._jvm.org.apache.spark.sql.catalyst.rules.RuleExecutor


def slowest_rules(spark, top: int) -> list[tuple[str, float, int]]:
    """The ``top`` rules by time since the metrics were reset: (rule, seconds, runs)."""
    rules = []
    for line in rule_executor(spark).dumpTimeSpent().splitlines():
        # "<rule>   <effective ns> / <total ns>   <effective runs> / <total runs>"
        fields = line.split()
        if len(fields) == 7 and fields[2] == "/" and fields[3].isdigit():
            rules.append((fields[0].rsplit(".", 1)[-1], int(fields[3]) / 1e9, int(fields[6])))
    return sorted(rules, key=lambda rule: -rule[1])[:top]


def copy_seed(seed: Path, work: Path) -> Path:
    """``seed`` copied to ``work``, its config pointing at the copy; returns the config's path."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(seed, work)
    config = work / "pipeline.toml"
    config.write_text(config.read_text().replace(str(seed), str(work)))
    return config


def time_store_writes(writer: SessionBatchWriter, windows: list[Window]) -> None:
    """Record, for the batch running, when each of ``STORE_WRITES`` returned."""
    for method, kind in STORE_WRITES.items():
        original = getattr(writer.store, method)

        @wraps(original)
        def timed(batch_id, docs, original=original, kind=kind):
            result = original(batch_id, docs)
            window = windows[-1]
            window.stored[kind] = time.time() - window.started
            return result

        setattr(writer.store, method, timed)


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """How long any of ``intervals`` was running (their union)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def read_events(event_logs: Path) -> list[dict]:
    """The events of the uncompressed event log(s) under ``event_logs``, in order."""
    files = sorted(p for p in event_logs.rglob("*") if p.is_file() and not p.name.startswith((".", "appstatus")))
    return [json.loads(line) for path in files for line in path.read_text().splitlines() if line]


def job_stats(events: list[dict], window: Window) -> tuple[int, float, float]:
    """Spark jobs started in the batch's window: their number, how long any of them was
    running (s) and their tasks' CPU time (s)."""
    start_ms, end_ms = window.started * 1000, window.ended * 1000
    jobs, ends, cpu_ns = {}, {}, 0
    for event in events:
        kind = event["Event"]
        if kind == "SparkListenerJobStart" and start_ms <= event["Submission Time"] <= end_ms:
            jobs[event["Job ID"]] = event["Submission Time"]
        elif kind == "SparkListenerJobEnd":
            ends[event["Job ID"]] = event["Completion Time"]
        elif kind == "SparkListenerTaskEnd" and start_ms <= event["Task Info"]["Launch Time"] <= end_ms:
            cpu_ns += (event.get("Task Metrics") or {}).get("Executor CPU Time", 0)
    busy = _busy_seconds([(jobs[j] / 1000, ends[j] / 1000) for j in jobs if j in ends])
    return len(jobs), busy, cpu_ns / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", required=True, type=Path, help="a run folder of bench/benchmark.py")
    parser.add_argument("--files", required=True, type=Path, help="folder of activity files, read in name order")
    parser.add_argument("--files-per-batch", type=int, default=10)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamrec-anatomy"), help="scratch folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark setting, e.g. Hadoop's own local file system: "
        "spark.hadoop.fs.file.impl=org.apache.hadoop.fs.LocalFileSystem and "
        "spark.hadoop.fs.AbstractFileSystem.file.impl=org.apache.hadoop.fs.local.LocalFs",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")

    if any("=" not in setting for setting in args.conf):
        parser.error("--conf takes KEY=VALUE")
    spark_settings = dict(setting.split("=", 1) for setting in args.conf)
    seed, work = args.seed.resolve(), args.work.resolve()
    cfg = load_config(copy_seed(seed, work), args.set)
    inputs = sorted(p for p in args.files.iterdir() if p.suffix == ".csv")
    needed = args.files_per_batch * args.batches
    if len(inputs) < needed:
        parser.error(f"{args.files} has {len(inputs)} .csv files; {needed} are needed")
    events_dir = Path(cfg.paths.events_dir)
    event_logs = work / "spark-events"
    event_logs.mkdir()
    spark = get_spark(
        "streamrec-batch-anatomy",
        conf={
            "spark.eventLog.enabled": "true",
            "spark.eventLog.dir": event_logs.as_uri(),
            "spark.eventLog.compress": "false",
            **spark_settings,
        },
    )
    ensure_tables(spark, cfg)  # as the stream does at start: the tables' properties follow the config
    writer = SessionBatchWriter(spark, cfg)
    windows: list[Window] = []
    time_store_writes(writer, windows)
    committed = LocalFS().list_names(f"{cfg.paths.checkpoint(STREAM_CHECKPOINT)}/{COMMIT_LOG}")
    first = max((int(name) for name in committed if name.isdigit()), default=-1) + 1
    try:
        for n in range(args.batches):
            # The writer reads only files inside the watched folder (lib.ingest.sources.unsafe_files).
            files = [
                shutil.copy2(p, events_dir / p.name) for p in inputs[n * args.files_per_batch :][: args.files_per_batch]
            ]
            batch = with_line_source(spark.read.text([str(f) for f in files]))
            before = JvmCounters.read(spark)  # read outside the batch's window, which it would lengthen
            windows.append(Window(first + n, time.time()))
            writer.write_batch(batch, first + n)
            windows[-1].ended = time.time()
            windows[-1].jvm = JvmCounters.read(spark) - before
            if n == 0:
                rule_executor(spark).resetMetrics()  # the rule table leaves out the JVM's first batch
        rules = slowest_rules(spark, 12)
    finally:
        writer.close()
        spark.stop()  # flushes the event log

    events = read_events(event_logs)
    for window in windows:
        report = writer.stats.get(window.batch_id)
        jobs, busy, cpu = job_stats(events, window)
        stored = ", ".join(f"{kind} at {seconds:.1f}" for kind, seconds in window.stored.items()) or "nothing"
        print(
            f"batch {window.batch_id}: {window.ended - window.started:.1f} s, {report.input_lines} lines; "
            f"{jobs} Spark jobs running {busy:.1f} s, task CPU {cpu:.1f} s; store: {stored}"
        )
        print(
            f"    JVM: JIT compilers {window.jvm.jit_ms / 1000:.1f} s, GC {window.jvm.gc_ms / 1000:.1f} s, "
            f"{window.jvm.generated_classes} generated classes compiled, "
            f"Catalyst rules {window.jvm.rule_ns / 1e9:.1f} s"
        )
        print(f"    stages: {report.stages_text}")
    if len(windows) > 1:
        later = sum(window.jvm.rule_ns for window in windows[1:]) / 1e9
        since, until = windows[1].batch_id, windows[-1].batch_id
        print(f"Catalyst rules, batches {since} to {until}: {later:.1f} s in all; slowest:")
        for name, seconds, runs in rules:
            print(f"    {name}: {seconds:.2f} s in {runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
