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
from lib.core.paths import CLASS_ARCHIVE, JARS_DIR, JVM_JAR, PROJECT_ROOT, fetched_jars, maven_jar
from lib.ingest.kafka import connector_jar_paths

if TYPE_CHECKING:
    from lib.core.config import Config

log = logging.getLogger(__name__)

SPARK_DEFAULTS = PROJECT_ROOT / "conf" / "spark-defaults.conf"
LOG4J_CONF = PROJECT_ROOT / "conf" / "log4j2.properties"
# Jobs over the whole lake (train, evaluate) want adaptive execution, which conf/spark-defaults.conf
# turns off for the stream's small micro-batches.
WHOLE_LAKE_CONF = {"spark.sql.adaptive.enabled": "true"}
# Without Hadoop's native library, which pyspark does not ship, Hadoop's local file system forks
# chmod for every file it creates and readlink twice for every rename (each Delta commit): about
# 160 processes a micro-batch of the stream. streamrec's own (jvm/src) does both in the JVM. Only
# for a local master: there every task runs in the driver's JVM, which has the jar on its class
# path; a cluster keeps Hadoop's defaults.
FORKLESS_LOCAL_FS = {
    "spark.hadoop.fs.file.impl": "streamrec.hadoop.ForklessLocalFileSystem",
    "spark.hadoop.fs.AbstractFileSystem.file.impl": "streamrec.hadoop.ForklessLocalFs",
}
DEFAULT_LOCAL_MASTER = "local[2]"


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


def jvm_jar() -> Path:
    """streamrec's own jar; raises with the fix when setup has not built it."""
    if not JVM_JAR.is_file():
        raise FileNotFoundError(
            f"{JVM_JAR} not found. Run `make setup` (or `python scripts/build_jvm.py`) to build it."
        )
    return JVM_JAR


def is_local(master: str) -> bool:
    """Whether ``master`` runs the whole application in one JVM (``local``, ``local[2]``, ...)."""
    return master == "local" or master.startswith("local[")


FAIR_POOLS = PROJECT_ROOT / "conf" / "fairscheduler.xml"
# A local driver maps the classes setup archived (``CLASS_ARCHIVE``) instead of loading and
# verifying them from the jars: a cold driver's session, first Delta write and first query took
# 19.4 to 20.5 s instead of 30.5 to 32.2 s here. The JVM ignores, silently, an archive that does
# not match its JDK or class path.
CLASS_ARCHIVE_OPTION = "-XX:SharedArchiveFile={archive} -Xlog:cds=off -Xlog:cds+dynamic=off"


def driver_settings(master: str) -> dict[str, str]:
    """The driver's class path (the metastore's JDBC driver, which the application class loader must
    see), its Java options (log4j2's configuration), the FAIR scheduler's pools
    (``conf/fairscheduler.xml``: the stream's slow pass weighs less than its micro-batches) and, on
    a local master, the forkless local file system (``FORKLESS_LOCAL_FS``) and the class archive
    (``CLASS_ARCHIVE_OPTION``) once setup has dumped it."""
    class_path = [metastore.client_jar()]
    settings = {"spark.scheduler.allocation.file": f"file:{FAIR_POOLS}"}
    java_options = [f"-Dlog4j2.configurationFile=file:{LOG4J_CONF}"]
    if is_local(master):
        class_path.append(jvm_jar())
        settings.update(FORKLESS_LOCAL_FS)
        if CLASS_ARCHIVE.is_file():
            java_options.append(CLASS_ARCHIVE_OPTION.format(archive=CLASS_ARCHIVE))
    return {
        "spark.driver.extraClassPath": os.pathsep.join(map(str, class_path)),
        "spark.driver.extraJavaOptions": " ".join(java_options),
        **settings,
    }


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
        master = os.environ.get("STREAMREC_MASTER", DEFAULT_LOCAL_MASTER)
        settings = {
            **read_spark_defaults(),
            "spark.master": master,
            "spark.jars": ",".join(str(p) for p in engine_jar_paths()),
            **driver_settings(master),
        }
        for key, value in settings.items():
            builder = builder.config(key, value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    log.debug("Spark %s session %s on %s", spark.version, app_name, spark.sparkContext.master)
    return spark
