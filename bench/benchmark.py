"""Benchmark (`make bench`; `make bench ARGS=--quick` for a run of a few minutes): catch-up
throughput beside DuckDB, freshness under steady load, a soak, and scaling in users and in
events per file. Every figure comes from running the real jobs through ./spark-submit.sh.

  .venv/bin/python bench/benchmark.py                      # full scale: more than an hour on 2 cores
  .venv/bin/python bench/benchmark.py --quick              # small scale: checks the plumbing, not the targets
  .venv/bin/python bench/benchmark.py --only catchup,scaling

Results: <out>/bench.json (figures, machine, settings), bench.md (the printed tables) and
bench.png (latency over time under load, memory over the soak, throughput against scale).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyarrow.parquet as pq

from bench.chaos import descendants
from bench.freshness import file_delays, source_delays, summary
from bench.harness import ROOT, RunFolder, metastore_of
from bench.serving import ApiProcess, ServingProbe, api_load_apart
from lib.core.config import load_config
from lib.core.metastore import stop_server
from lib.core.processes import free_port
from lib.core.schemas import DELTA_COMMITS, SPARK_JOBS, STREAM_METRICS, STREAM_TABLES
from lib.ingest.backlog import OFFSET_LOG, batch_end_offsets
from lib.ingest.generator import ActivityProfile, Catalogue, KafkaActivityWriter, simulate_events
from lib.ingest.kafka import create_topic, start_broker, stop_broker
from lib.lake.checkpoint import batches_committed, has_processed
from lib.stream.query import STREAM_CHECKPOINT

ITEMS = 1000
# The API under load while the stream runs (issue target: 500 requests/s for 60 s, p99 <= 10 ms).
API_LOAD_RATE = 500
API_LOAD_SECONDS = 60
API_LOAD_EVENTS_PER_S = 2000  # the freshness run during which the API is loaded


@dataclass(frozen=True)
class Scale:
    repeats: int = 3
    catchup_files: int = 100
    catchup_events_per_file: int = 20_000
    catchup_users: int = 10_000
    # The settings measured; the target is for 10 and 20.
    catchup_files_per_trigger: tuple[int, ...] = (10, 20)
    # The backlog of the short run that the marginal rate is taken against (files).
    catchup_small_files: int = 20
    fresh_rates: tuple[int, ...] = (1000, 2000, 5000)
    fresh_seconds: int = 300
    fresh_users: int = 100_000  # the load: 100,000 users
    # No practical cap: under load each batch takes every file waiting (a cap below the backlog
    # makes the stream fall behind, and Spark then plans from its cached listing).
    fresh_files_per_trigger: int = 1000
    soak_seconds: int = 1800
    soak_rate: int = 2000
    soak_users: int = 100_000
    sample_every_s: float = 15.0
    scale_users: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    scale_user_files: int = 6
    scale_user_events_per_file: int = 20_000
    scale_events_per_file: tuple[int, ...] = (1000, 10_000, 100_000)
    scale_files_per_size: int = 4
    seed_files: int = 10
    seed_events_per_file: int = 10_000
    kafka_rate: int = 2000  # events/s of the freshness run with Kafka input (fresh_seconds long)


FULL = Scale()
# Three stream JVMs (catch-up, freshness, scaling) and no model: each JVM's first batch is
# slow (cold), and a model would cost a stream and a train job more. `--only freshness --quick`
# builds one, so that live_recommendations are measured too.
QUICK = Scale(
    repeats=1,
    catchup_files=5,
    catchup_events_per_file=2000,
    catchup_users=1000,
    catchup_files_per_trigger=(5,),
    catchup_small_files=2,
    fresh_rates=(1000,),
    fresh_seconds=10,
    fresh_users=1000,
    soak_seconds=0,
    sample_every_s=5.0,
    seed_files=2,
    seed_events_per_file=2000,
    scale_users=(),
    scale_events_per_file=(500, 5000),
    scale_files_per_size=1,
    kafka_rate=1000,
)


class Workdir(RunFolder):
    """One benchmark run's folder and config; every job's output goes to ``<dir>/stream.log``."""

    def __init__(
        self,
        root: Path,
        name: str,
        incoming: Path | None = None,
        purchases: Path | None = None,
        stream: dict | None = None,
        keep: bool = False,
        extra_toml: str = "",
    ):
        """:param stream: ``[stream]`` settings (``max_files_per_trigger`` is 1 unless given).
        :param keep: use the folder as a previous run left it (else it starts empty).
        :param extra_toml: more config sections (e.g. ``[source]`` and ``[kafka]``)."""
        super().__init__(root, name, incoming, purchases, keep)
        self.log = self.dir / "stream.log"
        if not (keep and self.config.exists()):
            self.write_config({"stream": {"max_files_per_trigger": 1, **(stream or {})}}, extra_toml)

    def cfg(self):
        return load_config(self.config)

    def job(self, script: str, *args: str) -> float:
        """Run a job to the end (it must succeed); returns its wall-clock seconds."""
        started = time.monotonic()
        self.run(script, *args, log_name=self.log.name, check=True)
        return time.monotonic() - started

    @property
    def stream_checkpoint(self) -> Path:
        return self.checkpoints / STREAM_CHECKPOINT

    def batches_committed(self) -> int:
        """How many micro-batches the stream has committed (Spark's commit log)."""
        return batches_committed(self.stream_checkpoint)

    def has_processed(self, files: list[Path]) -> bool:
        return has_processed(self.stream_checkpoint, files)

    def messages_processed(self) -> int:
        return messages_processed(self.stream_checkpoint)

    def metrics(self, spark) -> list:
        """The stream's ``stream_metrics`` rows, one per batch, in batch order."""
        return spark.read.format("delta").load(str(self.lake / STREAM_METRICS)).orderBy("batch_id").collect()

    def use_model(self, seed: Workdir) -> None:
        shutil.copytree(seed.lake / "models", self.lake / "models")


def messages_processed(checkpoint: Path) -> int:
    """How many Kafka messages the stream of ``checkpoint`` has read in the batches it committed
    (the end offsets of the last one, in the query's offset log), on a topic it reads from the start."""
    committed = batches_committed(checkpoint)
    entry = checkpoint / OFFSET_LOG / str(committed - 1)
    return sum(batch_end_offsets(entry.read_text()).values()) if committed and entry.exists() else 0


def machine() -> dict:
    memory_kb = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
    from importlib import metadata

    return {
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "pyspark": metadata.version("pyspark"),
        "delta_spark": metadata.version("delta-spark"),
        "duckdb": metadata.version("duckdb"),
        "spark_defaults": (ROOT / "conf" / "spark-defaults.conf").read_text().split("\n"),
    }


# ---------------------------------------------------------------- DuckDB baseline
def duckdb_pipeline(incoming: Path, purchases: Path, out: Path, threads: int = 2) -> dict:
    """The stream's computation done in batch by DuckDB: point-in-time enrichment,
    sessionization with a 30-minute gap and per-session features (incl. purchase history as of
    the session start), written to Parquet. Returns row counts."""
    import duckdb

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = duckdb.connect(config={"threads": threads})
    con.execute(f"""
        CREATE TEMP TABLE events AS
        SELECT user_id, item_id, lower(trim(event_type)) AS event_type, "timestamp" AS event_ts, filename AS source_file
        FROM read_csv('{incoming}/*.csv', header = true, filename = true,
                      columns = {{'user_id': 'INTEGER', 'item_id': 'INTEGER', 'event_type': 'VARCHAR', 'timestamp': 'TIMESTAMP'}})
        WHERE user_id > 0 AND item_id > 0 AND lower(trim(event_type)) IN ('view', 'click', 'add_to_cart')""")
    con.execute(f"CREATE TEMP TABLE purchases AS SELECT * FROM read_parquet('{purchases}/**/*.parquet')")
    history = """
        (SELECT k.user_id, k.as_of, count(p.purchase_date) AS past_purchases, avg(p.purchase_amount) AS avg_purchase_amount
         FROM (SELECT DISTINCT user_id, CAST({ts} AS DATE) AS as_of FROM {source}) k
         LEFT JOIN purchases p ON p.user_id = k.user_id AND p.purchase_date < k.as_of
         GROUP BY k.user_id, k.as_of)"""
    con.execute(f"""
        COPY (SELECT e.*, h.avg_purchase_amount, h.past_purchases FROM events e
              JOIN {history.format(ts="event_ts", source="events")} h ON h.user_id = e.user_id AND h.as_of = CAST(e.event_ts AS DATE))
        TO '{out}/enriched_events.parquet' (FORMAT parquet)""")
    con.execute("""
        CREATE TEMP TABLE sessions AS
        WITH flagged AS (
            SELECT *, CASE WHEN event_ts - lag(event_ts) OVER w > INTERVAL 30 MINUTE OR lag(event_ts) OVER w IS NULL
                      THEN 1 ELSE 0 END AS starts
            FROM events WINDOW w AS (PARTITION BY user_id ORDER BY event_ts)),
        numbered AS (SELECT *, sum(starts) OVER (PARTITION BY user_id ORDER BY event_ts ROWS UNBOUNDED PRECEDING) AS n FROM flagged)
        SELECT user_id, min(event_ts) AS session_start, max(event_ts) AS session_end, count(*) AS num_events,
               count_if(event_type = 'view') AS num_views, count_if(event_type = 'click') AS num_clicks,
               count_if(event_type = 'add_to_cart') AS num_add_to_cart, arg_max(event_type, event_ts) AS last_event
        FROM numbered GROUP BY user_id, n""")
    con.execute(f"""
        COPY (SELECT s.user_id || '-' || epoch_us(s.session_start) AS session_id, s.*,
                     epoch_us(s.session_end - s.session_start) / 1e6 AS session_length_s,
                     CASE WHEN s.num_events > 1 THEN epoch_us(s.session_end - s.session_start) / 1e6 / (s.num_events - 1) END AS avg_time_gap_s,
                     h.avg_purchase_amount, h.past_purchases
              FROM sessions s JOIN {history.format(ts="session_start", source="sessions")} h
                ON h.user_id = s.user_id AND h.as_of = CAST(s.session_start AS DATE))
        TO '{out}/session_features.parquet' (FORMAT parquet)""")
    counts = {
        "events": con.execute("SELECT count(*) FROM events").fetchone()[0],
        "sessions": con.execute("SELECT count(*) FROM sessions").fetchone()[0],
    }
    con.close()
    return counts


# ---------------------------------------------------------------- observations of a running stream
def active_files(table: Path) -> int:
    """Data files in the table's current snapshot, from its Delta log (no Spark)."""
    log = table / "_delta_log"
    files: set[str] = set()
    start = -1
    last = log / "_last_checkpoint"
    if last.exists():
        start = json.loads(last.read_text())["version"]
        for part in sorted(log.glob(f"{start:020d}.checkpoint*.parquet")):
            files.update(a["path"] for a in pq.read_table(part, columns=["add"]).column("add").to_pylist() if a)
    for commit in sorted(log.glob("*.json")):
        if int(commit.name.split(".")[0]) <= start:
            continue
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                files.add(action["add"]["path"])
            elif "remove" in action:
                files.discard(action["remove"]["path"])
    return len(files)


def state_rows(store: Path) -> int | None:
    """Open sessions in the online store's live state."""
    if not store.is_file():
        return None
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        try:
            return db.execute("SELECT count(*) FROM open_sessions").fetchone()[0]
        except sqlite3.OperationalError:  # no batch yet
            return None


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 2) if path.exists() else 0.0


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            return round(int(next(line.split()[1] for line in status if line.startswith("VmRSS"))) / 1024, 1)
    except (OSError, StopIteration):
        return 0.0


def stream_processes(stream: subprocess.Popen) -> dict[str, int]:
    """The JVM and the Python driver under ./spark-submit.sh."""
    found = {}
    for pid in descendants(stream.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and command[0].endswith(b"java"):
            found["jvm"] = pid
        elif any(part.endswith(b"jobs/stream.py") for part in command) and b"spark-submit" not in command[0]:
            found["driver"] = pid
    return found


def sample(work: Workdir, stream: subprocess.Popen, started: float) -> dict:
    processes = stream_processes(stream)
    return {
        "t_s": round(time.monotonic() - started, 1),
        "jvm_rss_mb": rss_mb(processes.get("jvm", -1)),
        "driver_rss_mb": rss_mb(processes.get("driver", -1)),
        "state_rows": state_rows(Path(f"{work.lake}-online.sqlite")),
        "checkpoint_mb": folder_mb(work.checkpoints),
        "lake_mb": folder_mb(work.lake),
        "active_files": {
            t: active_files(work.lake / t) for t in STREAM_TABLES if (work.lake / t / "_delta_log").exists()
        },
        "batches": work.batches_committed(),
    }


# ---------------------------------------------------------------- the measurements
def seed_model(root: Path, scale: Scale, reuse: bool = False) -> Workdir:
    """A lake with a committed model, copied into every run so live_recommendations are produced."""
    if reuse and any((root / "seed" / "lake" / "models").glob("*/_COMMITTED")):
        return Workdir(root, "seed", keep=True)
    seed = Workdir(root, "seed", stream={"max_files_per_trigger": 50})
    seed.generate(
        "purchases",
        "--users",
        str(scale.catchup_users),
        "--items",
        str(ITEMS),
        "--purchases",
        str(scale.catchup_users * 5),
    )
    seed.generate(
        "events",
        "--files",
        str(scale.seed_files),
        "--events-per-file",
        str(scale.seed_events_per_file),
        "--files-per-second",
        "0",
        "--users",
        str(scale.catchup_users),
        "--items",
        str(ITEMS),
    )
    seed.job("jobs/stream.py", "--available-now")
    seed.job("jobs/train.py")
    return seed


def catchup(root: Path, scale: Scale, seed: Workdir | None, spark) -> dict:
    """The backlog replayed by ``jobs/stream.py --available-now`` at each
    ``max_files_per_trigger`` of the scale, beside DuckDB's batch computation of the same files.

    Each repeat also replays the first ``catchup_small_files`` files alone, so that the marginal
    rate, (N_big - N_small) / (T_big - T_small), leaves out the start-up both runs pay.
    """
    data = Workdir(root, "catchup_input")
    data.generate(
        "purchases",
        "--users",
        str(scale.catchup_users),
        "--items",
        str(ITEMS),
        "--purchases",
        str(scale.catchup_users * 5),
    )
    data.generate(
        "events",
        "--files",
        str(scale.catchup_files),
        "--events-per-file",
        str(scale.catchup_events_per_file),
        "--files-per-second",
        "0",
        "--users",
        str(scale.catchup_users),
        "--items",
        str(ITEMS),
        "--out-of-order-share",
        "0",
    )
    small_input = root / "catchup_input_small"
    shutil.rmtree(small_input, ignore_errors=True)
    small_input.mkdir(parents=True)
    for path in sorted(data.incoming.glob("*.csv"))[: scale.catchup_small_files]:
        shutil.copy(path, small_input / path.name)
    events = scale.catchup_files * scale.catchup_events_per_file
    small_events = scale.catchup_small_files * scale.catchup_events_per_file

    def replay(name: str, incoming: Path, files_per_trigger: int) -> dict:
        run = Workdir(
            root,
            name,
            incoming=incoming,
            purchases=data.purchases,
            stream={"max_files_per_trigger": files_per_trigger},
        )
        if seed is not None:
            run.use_model(seed)
        wall = run.job("jobs/stream.py", "--available-now")
        return {"wall_s": round(wall, 2), **batch_figures(run.metrics(spark))}

    duckdb_runs = []
    for attempt in range(scale.repeats):
        started = time.monotonic()
        counts = duckdb_pipeline(data.incoming, data.purchases, root / "catchup_duckdb")
        duckdb_runs.append({"wall_s": round(time.monotonic() - started, 2), **counts})
    duckdb_s = statistics.median(r["wall_s"] for r in duckdb_runs)
    settings = []
    for files_per_trigger in scale.catchup_files_per_trigger:
        big_runs, small_runs = [], []
        for attempt in range(scale.repeats):
            big_runs.append(replay(f"catchup_{files_per_trigger}_{attempt}", data.incoming, files_per_trigger))
            small_runs.append(replay(f"catchup_{files_per_trigger}_small_{attempt}", small_input, files_per_trigger))
            print(
                f"  catch-up at {files_per_trigger} files/batch, run {attempt + 1}: {events} events in "
                f"{big_runs[-1]['wall_s']} s, {small_events} in {small_runs[-1]['wall_s']} s",
                flush=True,
            )
        big_s = statistics.median(r["wall_s"] for r in big_runs)
        small_s = statistics.median(r["wall_s"] for r in small_runs)
        rows = (
            spark.read.format("delta")
            .load(str(root / f"catchup_{files_per_trigger}_0" / "lake" / "enriched_events"))
            .count()
        )
        settings.append(
            {
                "max_files_per_trigger": files_per_trigger,
                "enriched_rows": rows,
                "spark_median_s": big_s,
                "spark_events_per_s": round(events / big_s),
                "spark_processing_events_per_s": round(events / statistics.median(r["batch_s"] for r in big_runs)),
                "small_median_s": small_s,
                "marginal_events_per_s": round((events - small_events) / (big_s - small_s))
                if big_s > small_s
                else None,
                "spark_to_duckdb": round(big_s / duckdb_s, 1),
                "runs": {"backlog": big_runs, "small": small_runs},
            }
        )
    return {
        "events": events,
        "small_events": small_events,
        "files": scale.catchup_files,
        "users": scale.catchup_users,
        "duckdb_median_s": duckdb_s,
        "duckdb_events_per_s": round(events / duckdb_s),
        "duckdb_runs": duckdb_runs,
        "settings": settings,
    }


def batch_figures(metrics: list) -> dict:
    """A run's batches from its ``stream_metrics`` rows: how many, their seconds (each batch's
    ``duration_s``: its foreachBatch up to the metrics commit) and seconds per stage, summed."""
    stages: dict[str, float] = {}
    for row in metrics:
        for name, seconds in (row.stage_s or {}).items():
            stages[name] = stages.get(name, 0.0) + seconds
    return {
        "batches": len(metrics),
        "batch_s": round(sum(row.duration_s for row in metrics), 2),
        "stages_s": {name: round(seconds, 2) for name, seconds in stages.items()},
        # How many batches ran each number of Spark jobs and of Delta commits (the engine counts
        # its batch's jobs from Spark's status tracker, by the query's job group).
        "spark_jobs_per_batch": _tally(row[SPARK_JOBS] for row in metrics),
        "delta_commits_per_batch": _tally(row[DELTA_COMMITS] for row in metrics),
    }


_RANKED = re.compile(r"ranked the live recommendations of (\d+) users through batch (\d+) in ([\d.]+) s")


def ranking_figures(log: Path) -> dict:
    """The live ranking's runs beside the batches, from the stream's log: how many, users and
    seconds per run (p50 and max), seconds in all."""
    runs = [(int(m[1]), float(m[3])) for m in _RANKED.finditer(log.read_text(errors="replace"))]
    if not runs:
        return {"rankings": 0}
    users, seconds = sorted(u for u, _ in runs), sorted(s for _, s in runs)
    return {
        "rankings": len(runs),
        "users_p50": users[len(users) // 2],
        "users_max": users[-1],
        "seconds_p50": seconds[len(seconds) // 2],
        "seconds_max": seconds[-1],
        "seconds_total": round(sum(seconds), 2),
    }


def _tally(values) -> dict[str, int]:
    """``{value: how many}``, by value."""
    counts: dict[str, int] = {}
    for value in sorted(v for v in values if v is not None):
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


def tally_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{value} in {n}" for value, n in counts.items()) or "-"


def steady_load(
    root: Path,
    name: str,
    scale: Scale,
    seed: Workdir | None,
    spark,
    rate: int,
    seconds: int,
    users: int,
    drain: bool = True,
    serve_load: bool = False,
) -> dict:
    """One file per second of ``rate`` events for ``seconds``; per-file freshness, and samples of
    memory, state and files while it runs. With ``drain`` the stream runs until it processed
    every file; without, it stops after the batch running when the load ends (the soak)."""
    stream = {"max_files_per_trigger": scale.fresh_files_per_trigger}
    run = Workdir(root, name, stream=stream)
    run.generate("purchases", "--users", str(users), "--items", str(ITEMS), "--purchases", str(users * 5))
    if seed is not None:
        run.use_model(seed)
    run.generate(
        "events",
        "--files",
        "1",
        "--events-per-file",
        str(rate),
        "--files-per-second",
        "0",
        "--users",
        str(users),
        "--items",
        str(ITEMS),
        "--prefix",
        "warmup",
    )
    stream = run.stream()
    started = time.monotonic()
    samples: list[dict] = []
    api = probe = load = None
    try:
        while not run.batches_committed():  # warm: the first batch is the JVM's slowest
            if stream.poll() is not None or time.monotonic() - started > 600:
                raise RuntimeError(f"stream did not start; see {run.log}")
            time.sleep(1)
        since = time.time()
        # The API serves the store the stream writes, and a client probes it for every file. When
        # ``serve_load``, the generator goes on API_LOAD_SECONDS more, while a second client sends
        # API_LOAD_RATE requests a second: the freshness counts the files of the first ``seconds``
        # only, so that the API's load (on the same 2 cores) does not blur the stream's figures.
        api = ApiProcess(run.config, free_port(), run.dir / "serve.log")
        probe = ServingProbe(run.incoming, api.port, since)
        probe.start()
        load_seconds = seconds + API_LOAD_SECONDS + 10 if serve_load else seconds
        if serve_load:
            load = ThreadPoolExecutor(1).submit(
                api_load_apart, api.port, users, API_LOAD_RATE, API_LOAD_SECONDS, seconds + 5
            )
        generator = run.generate(
            "events",
            "--duration",
            str(load_seconds),
            "--events-per-file",
            str(rate),
            "--files-per-second",
            "1",
            "--users",
            str(users),
            "--items",
            str(ITEMS),
            "--start",
            "2024-03-01",
            background=True,
        )
        next_sample = time.monotonic()
        expected = None
        deadline = time.monotonic() + seconds * 4 + 600
        while time.monotonic() < deadline:
            if time.monotonic() >= next_sample:
                samples.append(sample(run, stream, started))
                next_sample += scale.sample_every_s
            if expected is None and generator.poll() is not None:
                if not drain:
                    batches_at_end = run.batches_committed()
                    while run.batches_committed() == batches_at_end and stream.poll() is None:
                        time.sleep(1)
                    break
                expected = sorted(run.incoming.glob("*.csv"))
            if expected is not None and run.has_processed(expected):
                break
            time.sleep(1)
        samples.append(sample(run, stream, started))
        if probe is not None:  # let the probe see the last files served
            time.sleep(min(30, max(5, seconds / 10)))
    finally:
        if probe is not None:
            probe.stop()
        api_figures = load.result() if load is not None else None
        if api is not None:
            api.stop()
        stream.send_signal(signal.SIGTERM)
        try:
            stream.wait(timeout=300)
        except subprocess.TimeoutExpired:
            stream.kill()
    delays = {
        table: [(landed, delay) for landed, delay in series if landed < since + seconds]
        for table, series in {**file_delays(spark, run.cfg(), since), **probe.results}.items()
    }
    figures = summary(delays)
    # The generator shares the 2 cores with the stream: what it achieved is the load, not the ask.
    landed = sorted(p.stat().st_mtime for p in run.incoming.glob("activity-*.csv"))
    offered = round(len(landed) * rate / (landed[-1] - since)) if landed else 0
    print(
        f"  {name}: "
        + ", ".join(f"{t} p50 {v.get('p50_s')} p95 {v.get('p95_s')} max {v.get('max_s')}" for t, v in figures.items()),
        flush=True,
    )
    return {
        "rate_events_per_s": rate,
        "offered_events_per_s": offered,
        "seconds": seconds,
        "users": users,
        "files": figures["enriched_events"]["files"],
        "files_landed": len(landed),
        "freshness": figures,
        "series": {t: [(round(landed - since, 1), round(d, 2)) for landed, d in s] for t, s in delays.items()},
        "samples": samples,
        **batch_figures(run.metrics(spark)),
        "live_ranking": ranking_figures(run.log),
        "api_unserved_files": probe.unserved,
        "api_load": api_figures,
    }


def kafka_load(root: Path, scale: Scale, seed: Workdir | None, spark, rate: int, seconds: int, users: int) -> dict:
    """``steady_load`` with Kafka input: a broker of the run's own, and once a second a batch of
    ``rate`` events produced and acknowledged; freshness per message from its acknowledgement
    to the commits (and, for one batch in five, to the API serving it)."""
    port = free_port()
    topic = "activity"
    extra = f'[source]\nkind = "kafka"\n[kafka]\nbootstrap_servers = "127.0.0.1:{port}"\ntopic = "{topic}"\n'
    run = Workdir(root, f"kafka_{rate}", extra_toml=extra)
    run.generate("purchases", "--users", str(users), "--items", str(ITEMS), "--purchases", str(users * 5))
    if seed is not None:
        run.use_model(seed)
    broker = start_broker(run.dir / "kafka", port)
    stream = api = probe = None
    try:
        create_topic(broker.bootstrap, topic, partitions=2)
        events = simulate_events(Catalogue(num_users=users, num_items=ITEMS, seed=42), ActivityProfile())
        writer = KafkaActivityWriter(broker.bootstrap, topic, events)
        writer.write_batch(rate)  # the warm-up batch
        stream = run.stream()
        started = time.monotonic()
        while not run.batches_committed():
            if stream.poll() is not None or time.monotonic() - started > 600:
                raise RuntimeError(f"stream did not start; see {run.log}")
            time.sleep(1)
        since = time.time()
        api = ApiProcess(run.config, free_port(), run.dir / "serve.log")
        probe = ServingProbe(None, api.port, since)
        probe.start()
        acked_at: dict[str, float] = {}
        for second in range(seconds):
            first = len(writer.manifest)
            writer.write_batch(rate)
            acked = time.time()
            batch = writer.manifest[first:]
            acked_at.update((row.file, acked) for row in batch)
            if second % 5 == 0 and batch:
                latest = max(batch, key=lambda row: row.event_ts or "")
                probe.submit(acked, latest.user_id, latest.event_ts)
            time.sleep(max(0.0, since + second + 1 - time.time()))
        offered = round(len(acked_at) / (time.time() - since))
        deadline = time.monotonic() + seconds * 4 + 600
        while run.messages_processed() < len(writer.manifest) and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(min(30, max(5, seconds / 10)))  # let the probe see the last batches served
        writer.close()
    finally:
        if probe is not None:
            probe.stop()
        if api is not None:
            api.stop()
        if stream is not None:
            stream.send_signal(signal.SIGTERM)
            try:
                stream.wait(timeout=300)
            except subprocess.TimeoutExpired:
                stream.kill()
        stop_broker(run.dir / "kafka")
    delays = {**source_delays(spark, run.cfg(), acked_at.get, since), **probe.results}
    figures = summary(delays)
    print(
        f"  kafka_{rate}: "
        + ", ".join(f"{t} p50 {v.get('p50_s')} p95 {v.get('p95_s')} max {v.get('max_s')}" for t, v in figures.items()),
        flush=True,
    )
    return {
        "source": "kafka",
        "rate_events_per_s": rate,
        "offered_events_per_s": offered,
        "seconds": seconds,
        "users": users,
        "freshness": figures,
        "series": {t: [(round(arrived - since, 1), round(d, 2)) for arrived, d in s] for t, s in delays.items()},
        **batch_figures(run.metrics(spark)),
        "api_unserved_batches": probe.unserved,
    }


def scaling(root: Path, scale: Scale, spark) -> dict:
    """Per-batch cost against users (same events) and against events per file (same users).
    The first batch of each run pays for the JVM's warm-up and is left out."""
    by_users = []
    for users in scale.scale_users:
        run = Workdir(root, f"scale_users_{users}")
        run.generate(
            "purchases", "--users", str(users), "--items", str(ITEMS), "--purchases", str(min(users * 5, 500_000))
        )
        run.generate(
            "events",
            "--files",
            str(scale.scale_user_files),
            "--events-per-file",
            str(scale.scale_user_events_per_file),
            "--files-per-second",
            "0",
            "--users",
            str(users),
            "--items",
            str(ITEMS),
        )
        run.job("jobs/stream.py", "--available-now")
        warm = [(m.input_lines, m.duration_s) for m in run.metrics(spark) if m.batch_id > 0]
        by_users.append(
            {
                "users": users,
                "events_per_batch": scale.scale_user_events_per_file,
                "median_batch_s": round(statistics.median(s for _, s in warm), 2),
                "events_per_s": round(sum(n for n, _ in warm) / sum(s for _, s in warm)),
            }
        )
        print(f"  users {users}: {by_users[-1]}", flush=True)
    run = Workdir(root, "scale_events")
    run.generate(
        "purchases",
        "--users",
        str(scale.catchup_users),
        "--items",
        str(ITEMS),
        "--purchases",
        str(scale.catchup_users * 5),
    )
    run.generate(
        "events",
        "--files",
        "1",
        "--events-per-file",
        "100",
        "--files-per-second",
        "0",
        "--users",
        str(scale.catchup_users),
        "--items",
        str(ITEMS),
        "--prefix",
        "a-warmup",
    )
    for size in scale.scale_events_per_file:
        run.generate(
            "events",
            "--files",
            str(scale.scale_files_per_size),
            "--events-per-file",
            str(size),
            "--files-per-second",
            "0",
            "--users",
            str(scale.catchup_users),
            "--items",
            str(ITEMS),
            "--prefix",
            f"size{size:07d}",
        )
    run.job("jobs/stream.py", "--available-now")
    batches = run.metrics(spark)
    by_events = []
    for size in scale.scale_events_per_file:
        warm = [m.duration_s for m in batches if m.batch_id > 0 and m.input_lines == size]
        if warm:
            by_events.append(
                {
                    "events_per_file": size,
                    "batches": len(warm),
                    "median_batch_s": round(statistics.median(warm), 2),
                    "events_per_s": round(size / statistics.median(warm)),
                }
            )
            print(f"  events per file {size}: {by_events[-1]}", flush=True)
    return {"by_users": by_users, "by_events_per_file": by_events}


# ---------------------------------------------------------------- report
def markdown(results: dict) -> str:
    lines = [
        f"machine: {results['machine']['cores']} cores, {results['machine']['memory_gb']} GB, "
        f"pyspark {results['machine']['pyspark']}, delta-spark {results['machine']['delta_spark']}, duckdb {results['machine']['duckdb']}",
        "",
    ]
    if "catchup" in results:
        c = results["catchup"]
        lines += [
            f"| catch-up of {c['events']} events | median wall s | events/s | marginal events/s "
            f"(against {c['small_events']}) | ratio to DuckDB |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| spark stream, all tables, {s['max_files_per_trigger']} files/batch | {s['spark_median_s']} | "
            f"{s['spark_events_per_s']} | {s['marginal_events_per_s']} | {s['spark_to_duckdb']} |"
            for s in c["settings"]
        ]
        lines += [
            f"| DuckDB batch (enriched + session features) | {c['duckdb_median_s']} | {c['duckdb_events_per_s']} | | |",
            "",
        ]
    loads = [v for k, v in results.items() if k.startswith(("fresh_", "kafka_")) or k == "soak"]
    if loads:
        lines += [
            "| load | source | asked events/s | achieved events/s | users | files or messages | table | p50 s | p95 s | max s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for load in loads:
            for table, f in load["freshness"].items():
                lines.append(
                    f"| {load['seconds']} s | {load.get('source', 'files')} | {load['rate_events_per_s']} | {load['offered_events_per_s']} | {load['users']} | {f['files']} | {table} | "
                    f"{f.get('p50_s', '-')} | {f.get('p95_s', '-')} | {f.get('max_s', '-')} |"
                )
        lines.append("")
        for load in loads:
            lines.append(
                f"{load['rate_events_per_s']} events/s ({load.get('source', 'files')}): Spark jobs a batch "
                f"{tally_text(load.get('spark_jobs_per_batch', {}))}; Delta commits a batch "
                f"{tally_text(load.get('delta_commits_per_batch', {}))} (value in batches)."
            )
        for load in loads:
            api = load.get("api_load")
            if api:
                lines.append(
                    f"API under {api['achieved_per_s']} requests/s for {API_LOAD_SECONDS} s while the stream ran at "
                    f"{load['rate_events_per_s']} events/s: p50 {api['p50_ms']} ms, p95 {api['p95_ms']} ms, "
                    f"p99 {api['p99_ms']} ms, max {api['max_ms']} ms, {api['errors']} errors of {api['requests']}."
                )
        lines.append("")
    if "soak" in results:
        s = results["soak"]["samples"]
        first, last = s[min(len(s) - 1, max(1, len(s) // 6))], s[-1]
        lines += [
            "| soak (after warm-up -> end) | value |",
            "|---|---|",
            f"| JVM RSS MB | {first['jvm_rss_mb']} -> {last['jvm_rss_mb']} |",
            f"| driver RSS MB | {first['driver_rss_mb']} -> {last['driver_rss_mb']} |",
            f"| state rows | {first['state_rows']} -> {last['state_rows']} |",
            f"| checkpoint MB | {first['checkpoint_mb']} -> {last['checkpoint_mb']} |",
            f"| max active files per table | {max(first['active_files'].values())} -> {max(last['active_files'].values())} |",
            "",
        ]
    if "scaling" in results:
        lines += ["| scaling | median batch s | events/s |", "|---|---|---|"]
        lines += [
            f"| {r['users']} users, {r['events_per_batch']} events/batch | {r['median_batch_s']} | {r['events_per_s']} |"
            for r in results["scaling"]["by_users"]
        ]
        lines += [
            f"| {r['events_per_file']} events/file (1 file/batch) | {r['median_batch_s']} | {r['events_per_s']} |"
            for r in results["scaling"]["by_events_per_file"]
        ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for key, load in results.items():
        if key.startswith("fresh_") or key == "soak":
            for table, series in load["series"].items():
                if series:
                    axes[0].plot([t for t, _ in series], [d for _, d in series], ".", ms=3, label=f"{key} {table}")
    axes[0].set(
        title="freshness per file (landed -> visible)", xlabel="s since load start", ylabel="delay s", yscale="log"
    )
    axes[0].legend(fontsize=6)
    sampled = "soak" if "soak" in results else next((k for k in results if k.startswith("fresh_")), None)
    samples = results[sampled]["samples"] if sampled else []
    if samples:
        t = [s["t_s"] for s in samples]
        axes[1].plot(t, [s["jvm_rss_mb"] for s in samples], label="JVM RSS MB")
        axes[1].plot(t, [s["driver_rss_mb"] for s in samples], label="driver RSS MB")
        axes[1].plot(t, [s["checkpoint_mb"] for s in samples], label="checkpoint MB")
        axes[1].plot(t, [max(s["active_files"].values(), default=0) for s in samples], label="max active files/table")
        axes[1].set(title=f"memory, checkpoint and files over the run ({sampled})", xlabel="s")
        axes[1].legend(fontsize=7)
    if "scaling" in results:
        users = results["scaling"]["by_users"]
        sizes = results["scaling"]["by_events_per_file"]
        axes[2].plot([r["users"] for r in users], [r["events_per_s"] for r in users], "o-", label="events/s vs users")
        axes[2].plot(
            [r["events_per_file"] for r in sizes],
            [r["events_per_s"] for r in sizes],
            "s-",
            label="events/s vs events per file",
        )
        axes[2].set(title="throughput against scale", xscale="log", xlabel="users / events per file", ylabel="events/s")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


SECTIONS = ("catchup", "freshness", "kafka", "soak", "scaling")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small scale, a few minutes")
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--reuse-seed", action="store_true", help="keep the model of a previous run under --root")
    parser.add_argument("--rates", help="comma-separated events/s for the freshness runs (default: the scale's)")
    parser.add_argument("--seconds", type=int, help="seconds of load of each freshness run (default: the scale's)")
    parser.add_argument("--repeats", type=int, help="runs of each catch-up measure (default: the scale's)")
    parser.add_argument(
        "--files-per-trigger", help="comma-separated max_files_per_trigger of the catch-up runs (default: the scale's)"
    )
    parser.add_argument("--root", default="/tmp/streamrec-bench", help="scratch folder for the runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where bench.json/md/png go")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    if args.rates:
        scale = replace(scale, fresh_rates=tuple(int(r) for r in args.rates.split(",")))
    if args.seconds:
        scale = replace(scale, fresh_seconds=args.seconds)
    if args.repeats:
        scale = replace(scale, repeats=args.repeats)
    if args.files_per_trigger:
        scale = replace(scale, catchup_files_per_trigger=tuple(int(n) for n in args.files_per_trigger.split(",")))
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    root, out = Path(args.root), Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": machine(),
        "scale": asdict(scale),
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }

    from lib.core.spark import get_spark

    spark = get_spark("streamrec-bench", {"spark.ui.enabled": "false", "spark.driver.memory": "1g"})
    spark.sparkContext.setLogLevel("ERROR")
    started = time.monotonic()
    seed = None
    if set(chosen) & {"catchup", "freshness", "kafka", "soak"} and not (args.quick and "catchup" in chosen):
        seed = seed_model(root, scale, args.reuse_seed)
    if "catchup" in chosen:
        print("=== catch-up" + (" (no model)" if seed is None else ""), flush=True)
        results["catchup"] = catchup(root, scale, seed, spark)
    if "freshness" in chosen:
        for rate in scale.fresh_rates:
            print(f"=== freshness at {rate} events/s", flush=True)
            results[f"fresh_{rate}"] = steady_load(
                root,
                f"fresh_{rate}",
                scale,
                seed,
                spark,
                rate,
                scale.fresh_seconds,
                scale.fresh_users,
                serve_load=rate == API_LOAD_EVENTS_PER_S,
            )
    if "kafka" in chosen:
        print(f"=== freshness with Kafka input at {scale.kafka_rate} events/s", flush=True)
        results[f"kafka_{scale.kafka_rate}"] = kafka_load(
            root, scale, seed, spark, scale.kafka_rate, scale.fresh_seconds, scale.fresh_users
        )
    if "soak" in chosen and scale.soak_seconds:
        print(f"=== soak: {scale.soak_seconds} s at {scale.soak_rate} events/s, {scale.soak_users} users", flush=True)
        results["soak"] = steady_load(
            root, "soak", scale, seed, spark, scale.soak_rate, scale.soak_seconds, scale.soak_users, drain=False
        )
    if "scaling" in chosen:
        print("=== scaling", flush=True)
        results["scaling"] = scaling(root, scale, spark)
    results["total_s"] = round(time.monotonic() - started, 1)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "bench.md").write_text(markdown(results))
    plot(results, out / "bench.png")
    print(
        "\n" + markdown(results) + f"\ntotal {results['total_s']} s; results in {out}/bench.json, bench.md, bench.png"
    )
    spark.stop()
    stop_server(metastore_of(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
