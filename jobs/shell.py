"""Start-up of ./pyspark.sh: a SparkSession with Delta whose catalog is the config's metastore,
the lake's tables named ``streamrec.<table>``, and ``streamrec`` the current database."""

import _bootstrap  # noqa: F401

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.core.spark import get_spark
from lib.lake.catalog import DATABASE, register_tables

_args = base_parser("streamrec pyspark shell").parse_args()
setup_logging("WARNING")
cfg = config_from_args(_args)
spark = get_spark("streamrec-shell", cfg=cfg)
spark.sparkContext.setLogLevel("ERROR")
sc = spark.sparkContext
_names = register_tables(spark, cfg)
spark.catalog.setCurrentDatabase(DATABASE)
print(f"Spark {spark.version} with Delta; lake at {cfg.paths.lake}")
print(f"tables in database {DATABASE}: " + (", ".join(_names) if _names else "none yet (run the stream first)"))
print('try: spark.table("streamrec.live_sessions").show()  or  spark.sql("select count(*) from enriched_events")')
