"""Register the lake's Delta tables by name in the session catalog."""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from lib.config import Config
from lib.schemas import TABLES
from lib.sources import path_exists

log = logging.getLogger(__name__)


def register_tables(spark: SparkSession, cfg: Config) -> list[str]:
    """``CREATE TABLE name USING DELTA LOCATION ...`` for every table present under the lake.

    Each query of a registered table reads its latest version, so the names stay useful while
    the stream runs. Returns the registered names.
    """
    registered = []
    for name in TABLES:
        location = cfg.paths.table(name)
        if not path_exists(spark, f"{location}/_delta_log"):
            log.info("table %s does not exist yet at %s", name, location)
            continue
        spark.sql(f"CREATE TABLE IF NOT EXISTS {name} USING DELTA LOCATION '{location}'")
        registered.append(name)
    return registered
