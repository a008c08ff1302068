"""Shared fixtures: one SparkSession for the whole run, and per-test pipeline configs in tmp dirs."""

from __future__ import annotations

import logging
import shutil

import pytest

from lib.core.metastore import stop_server
from lib.core.spark import get_spark
from tests.helpers import TEST_METASTORE, TEST_SPARK_CONF, make_config


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


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path)
