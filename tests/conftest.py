"""Shared fixtures: one SparkSession for the whole run, and per-test pipeline configs in tmp dirs."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest

from lib.config import load_config
from lib.metastore import stop_server
from lib.spark import get_spark

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


@pytest.fixture(scope="session", autouse=True)
def metastore_server():
    """Stops, by pid, the metastore server that the session or a job of the tests started."""
    yield TEST_METASTORE
    stop_server(TEST_METASTORE)
    shutil.rmtree(TEST_METASTORE, ignore_errors=True)


@pytest.fixture(scope="session")
def spark(metastore_server):
    session = get_spark("streamrec-tests", TEST_SPARK_CONF, make_config(metastore_server))
    session.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    yield session
    session.stop()


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


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path)
