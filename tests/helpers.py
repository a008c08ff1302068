"""Helpers of the tests: configs under a temporary folder, input files and purchase tables
written as the generator would, the stream and the API started as a user starts them, and
readers of their results."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq

from bench.serving import ApiProcess, get
from lib.core.config import config_toml, load_config
from lib.core.processes import free_port
from lib.ingest.generator import (
    ActivityProfile,
    ActivityWriter,
    Catalogue,
    generate_purchases,
    purchases_table,
    simulate_events,
)
from lib.lake.checkpoint import batches_committed as checkpoint_batches
from lib.stream.query import STREAM_CHECKPOINT

# One Hive metastore (and its Derby server) per test process, shared by the session and by the jobs
# tests start: pytest-xdist's workers are processes of their own.
TEST_METASTORE = Path(tempfile.mkdtemp(prefix="streamrec-test-metastore-"))

TEST_SPARK_CONF = {
    "spark.sql.shuffle.partitions": "1",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.driver.memory": "2g",
}


ROOT = Path(__file__).resolve().parents[1]


def make_config(root: Path, *overrides: str):
    """A pipeline config whose paths all live under ``root``."""
    return load_config(
        None,
        [
            f"paths.events_dir={root / 'incoming'}",
            f"paths.purchases={root / 'purchases'}",
            f"paths.lake={root / 'lake'}",
            f"paths.checkpoints={root / 'checkpoints'}",
            f"paths.online_store={root / 'online' / 'streamrec.sqlite'}",
            f"paths.metastore={TEST_METASTORE}",
            *overrides,
        ],
    )


def start_stream_job(toml: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``./spark-submit.sh jobs/stream.py --config toml [args]``, its output appended to ``log``, in a
    process group of its own (as a supervisor, `timeout` or Airflow would start it); ``env`` adds
    to the environment."""
    with open(log, "a") as out:
        return subprocess.Popen(
            [str(ROOT / "spark-submit.sh"), "jobs/stream.py", "--config", str(toml), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


def running(pids: list[int]) -> list[int]:
    """Those of ``pids`` that are still running (a zombie has ended)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def batches_committed(cfg) -> int:
    """Micro-batches the stream of ``cfg`` has committed (its checkpoint's commit log)."""
    return checkpoint_batches(cfg.paths.checkpoint(STREAM_CHECKPOINT))


def wait_for_batches(cfg, job: subprocess.Popen, more_than: int, log: Path, timeout_s: float = 900) -> None:
    """Wait until the stream of ``cfg`` has committed more than ``more_than`` batches, the job
    still running (``log`` is its output, shown when it is not). The first batch of a new JVM can
    take minutes on a loaded 2-core machine."""
    deadline = time.monotonic() + timeout_s
    while batches_committed(cfg) <= more_than and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.poll() is None and batches_committed(cfg) > more_than, log.read_text(errors="replace")[-3000:]


def write_purchases(folder: str, rows, name: str = "part-00000.parquet") -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    table = purchases_table(rows)
    pq.write_table(table, str(Path(folder) / name))


def generated_purchases(users: int, items: int, count: int, seed: int = 7):
    return generate_purchases(Catalogue(num_users=users, num_items=items, seed=seed), count)


def activity_writer(
    cfg, users=30, items=60, seed=7, bad_share=0.0, start=datetime(2024, 1, 1), **profile
) -> ActivityWriter:
    catalogue = Catalogue(num_users=users, num_items=items, seed=seed)
    events = simulate_events(catalogue, ActivityProfile(start=start, **profile))
    return ActivityWriter(Path(cfg.paths.events_dir), events, bad_share=bad_share, seed=seed)


def write_lines(cfg, name: str, lines: list[str]) -> None:
    """Land a file atomically; its modification time orders it after every file already there
    (the file source takes files in modification-time order)."""
    folder = Path(cfg.paths.events_dir)
    folder.mkdir(parents=True, exist_ok=True)
    hidden = folder / f".{name}"
    hidden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    latest = max((p.stat().st_mtime for p in folder.iterdir() if not p.name.startswith(".")), default=0.0)
    stamp = max(latest + 1.0, time.time())
    os.utime(hidden, (stamp, stamp))
    hidden.rename(folder / name)


def write_manifest(rows, path: Path) -> str:
    """The generator's ground truth as JSON lines, for ``lib.lake.verify.read_manifest``."""
    path.write_text("\n".join(json.dumps(dataclasses.asdict(r)) for r in rows) + "\n")
    return str(path)


def write_config_file(cfg, path: Path, extra: str = "") -> Path:
    """A TOML file with the paths of ``cfg`` (plus ``extra`` TOML), for jobs run by spark-submit."""
    keys = ("events_dir", "purchases", "lake", "checkpoints", "online_store", "metastore")
    path.write_text(config_toml({"paths": {k: getattr(cfg.paths, k) for k in keys}}) + extra)
    return path


def read(spark, cfg, table: str):
    return spark.read.format("delta").load(cfg.paths.table(table))


def assert_same_profiles(actual, expected) -> None:
    """Profiles equal in every column but ``updated_at``; doubles to 1e-9 (the stream's means are
    pandas', the rebuild's Spark's: they may differ in the last bit). Differences are listed per
    user and column."""
    import math

    def rows(df) -> dict:
        return {r.user_id: r.asDict() for r in df.drop("updated_at").collect()}

    got, want = rows(actual), rows(expected)
    assert got.keys() == want.keys(), (sorted(got.keys() - want.keys())[:10], sorted(want.keys() - got.keys())[:10])

    def same(a, b) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        return a == b

    differences = [(u, c, got[u][c], want[u][c]) for u in got for c in got[u] if not same(got[u][c], want[u][c])]
    assert not differences, differences[:10]


def store_docs(cfg, users) -> dict:
    """Each user's session and profile as the online store serves them, ``updated_at`` aside."""
    from lib.serve.online_store import SQLiteStore

    store = SQLiteStore(cfg.paths.online_store, readonly=True)
    docs = {}
    for user in users:
        session, profile = store.session(user), store.profile(user)
        for doc in (session, profile):
            if doc is not None:
                doc.pop("updated_at", None)
        docs[user] = (session, profile)
    return docs


class ApiServer:
    """``jobs/serve.py`` as a user runs it (``bench.serving.ApiProcess``): a real uvicorn process
    on a free port of 127.0.0.1, stopped by pid on exit."""

    def __init__(self, cfg, folder: Path, config: Path | None = None):
        """:param config: the TOML file to serve with (default: one with the paths of ``cfg``)."""
        self.cfg = cfg
        self.config = config or write_config_file(cfg, folder / "serve.toml")
        self.log = folder / "serve.log"

    def __enter__(self) -> "ApiServer":
        self.process = ApiProcess(self.config, free_port(), self.log)
        return self

    def __exit__(self, *exc) -> None:
        self.process.stop()

    def get(self, path: str) -> tuple[int | None, dict | None]:
        """(status, JSON body) of ``GET path``."""
        return get(self.process.port, path)

    def post(self, path: str, body) -> tuple[int, dict]:
        """(status, JSON body) of ``POST path`` with ``body`` as JSON (a connection of its own)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.process.port, timeout=60)
        try:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            connection.request("POST", path, payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()


def parquet_files(table: str) -> set[str]:
    """Names of the data files in a Delta table's folder, referenced or not."""
    return {p.name for p in Path(table).rglob("*.parquet") if "_delta_log" not in p.parts}


def active_files(spark, table: str) -> set[str]:
    """Names of the data files the table's current version reads."""
    from delta.tables import DeltaTable

    return {Path(f).name for f in DeltaTable.forPath(spark, table).toDF().inputFiles()}
