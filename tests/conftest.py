"""Shared fixtures: one SparkSession for the whole run, and per-test pipeline configs in tmp dirs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lib.config import load_config
from lib.spark import get_spark

TEST_SPARK_CONF = {
    "spark.sql.shuffle.partitions": "1",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.driver.memory": "2g",
}


@pytest.fixture(scope="session")
def spark():
    session = get_spark("streamrec-tests", TEST_SPARK_CONF)
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
            *overrides,
        ],
    )


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path)
