"""One SparkSession factory for spark-submit, tests and the interactive shell.

Under ``spark-submit`` (``./spark-submit.sh``) the conf file, the jars and the master come from
the command line and this only attaches to the session. Anywhere else (pytest, the shell, a
plain ``python``) it starts a local session configured exactly like spark-submit.sh would:
``conf/spark-defaults.conf``, the jars from ``.cache/jars`` and ``local[2]``. Given a config,
the session's catalog is the config's Hive metastore (``lib.core.metastore``), started if need be.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import SparkSession

from lib.core import metastore
from lib.core.paths import JARS_DIR, PROJECT_ROOT, fetched_jars, maven_jar
from lib.ingest.kafka import connector_jar_paths

if TYPE_CHECKING:
    from lib.core.config import Config

log = logging.getLogger(__name__)

SPARK_DEFAULTS = PROJECT_ROOT / "conf" / "spark-defaults.conf"
LOG4J_CONF = PROJECT_ROOT / "conf" / "log4j2.properties"
# Jobs over the whole lake (train, evaluate) want adaptive execution, which conf/spark-defaults.conf
# turns off for the stream's small micro-batches.
WHOLE_LAKE_CONF = {"spark.sql.adaptive.enabled": "true"}


def delta_maven_coordinates() -> list[str]:
    """Maven coordinates of the Delta jars matching the installed pyspark and delta-spark."""
    spark_minor = ".".join(metadata.version("pyspark").split(".")[:2])
    delta = metadata.version("delta-spark")
    return [f"io.delta:delta-spark_{spark_minor}_2.13:{delta}", f"io.delta:delta-storage:{delta}"]


def delta_jar_paths() -> list[Path]:
    """Local paths of the Delta jars; raises with the fix when setup has not fetched them."""
    return fetched_jars((maven_jar(JARS_DIR, c) for c in delta_maven_coordinates()), "the Delta jars")


def engine_jar_paths() -> list[Path]:
    """The jars every streamrec session loads: Delta and Spark's Kafka connector."""
    return [*delta_jar_paths(), *connector_jar_paths()]


def read_spark_defaults(path: Path = SPARK_DEFAULTS) -> dict[str, str]:
    """Parse a spark-defaults.conf file (``key whitespace value`` lines, ``#`` comments)."""
    conf = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        conf[key] = value.strip()
    return conf


def launched_by_spark_submit() -> bool:
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(
    app_name: str = "streamrec", conf: dict[str, str] | None = None, cfg: Config | None = None
) -> SparkSession:
    """Return the active SparkSession or build one configured for streamrec.

    :param conf: extra settings; they win over ``conf/spark-defaults.conf``.
    :param cfg: the pipeline config whose metastore (``paths.metastore``) names the tables; a
        session already active keeps the catalog it was built with.
    """
    builder = SparkSession.builder.appName(app_name)
    if cfg is not None and SparkSession.getActiveSession() is None:
        for key, value in metastore.spark_conf(metastore.ensure_server(cfg.paths.metastore)).items():
            builder = builder.config(key, value)
    if not launched_by_spark_submit():
        # The web UI binds to SPARK_LOCAL_IP; keep it (and the driver) on loopback locally.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers (pandas UDFs) need this interpreter's packages (numpy, pandas, pyarrow).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # ... and lib itself, wherever the driver was started from (spark-submit.sh ships it as --py-files).
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if str(PROJECT_ROOT) not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, paths)])
        settings = {
            **read_spark_defaults(),
            "spark.master": os.environ.get("STREAMREC_MASTER", "local[2]"),
            "spark.jars": ",".join(str(p) for p in engine_jar_paths()),
            # The metastore's JDBC driver must be visible to the application class loader.
            "spark.driver.extraClassPath": str(metastore.client_jar()),
            "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{LOG4J_CONF}",
        }
        for key, value in settings.items():
            builder = builder.config(key, value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    log.debug("Spark %s session %s on %s", spark.version, app_name, spark.sparkContext.master)
    return spark
