"""Name the lake's Delta tables in the metastore: ``streamrec.<table>`` at ``paths.lake``."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

from pyspark.sql import SparkSession

from lib.core.config import Config
from lib.core.schemas import TABLES
from lib.ingest.sources import path_exists

log = logging.getLogger(__name__)

DATABASE = "streamrec"
_LOCATION_LINE = re.compile(r"^Location: (.+)$", re.MULTILINE)


def _normalised(location: str) -> str:
    return os.path.normpath(re.sub(r"^file:(//)?", "", location))


def registered_locations(spark: SparkSession) -> dict[str, str]:
    """Table name -> location of every table of the ``streamrec`` database.

    ``SHOW TABLE EXTENDED`` answers from the metastore alone, without opening each table's log.
    """
    rows = spark.sql(f"SHOW TABLE EXTENDED IN {DATABASE} LIKE '*'").collect()
    locations = {}
    for row in rows:
        match = _LOCATION_LINE.search(row["information"])
        locations[row["tableName"]] = _normalised(match.group(1)) if match else ""
    return locations


def register_tables(spark: SparkSession, cfg: Config, names: Iterable[str] = TABLES) -> list[str]:
    """Register each of ``names`` that exists under the lake as ``streamrec.<name>``.

    A name that points at another location (another config's lake) is pointed at this one; the
    tables are external, so dropping a name never deletes data. A query by name reads the
    table's latest version, so names stay current while the stream writes. Returns the names
    registered for this lake.
    """
    if spark.conf.get("spark.sql.catalogImplementation") != "hive":
        log.info("this session has no metastore (built without a config): tables stay unnamed")
        return []
    if not spark.catalog.databaseExists(DATABASE):  # CREATE ... IF NOT EXISTS logs the metastore's refusal as an ERROR
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    current = registered_locations(spark)
    registered = []
    for name in names:
        location = cfg.paths.table(name)
        if not path_exists(spark, f"{location}/_delta_log"):
            log.info("table %s does not exist yet at %s", name, location)
            continue
        registered.append(name)
        if current.get(name) == _normalised(location):
            continue
        if name in current:
            spark.sql(f"DROP TABLE {DATABASE}.{name}")
        quoted = location.replace("\\", "\\\\").replace("'", "\\'")
        spark.sql(f"CREATE TABLE {DATABASE}.{name} USING DELTA LOCATION '{quoted}'")
        log.info("registered %s.%s at %s", DATABASE, name, location)
    return registered
