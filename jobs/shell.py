"""Start-up of ./pyspark.sh: a SparkSession with Delta and the lake's tables registered by name."""

import _bootstrap  # noqa: F401

from lib.catalog import register_tables
from lib.cli import base_parser, config_from_args, setup_logging
from lib.spark import get_spark

_args = base_parser("streamrec pyspark shell").parse_args()
setup_logging("WARNING")
cfg = config_from_args(_args)
spark = get_spark("streamrec-shell")
spark.sparkContext.setLogLevel("ERROR")
sc = spark.sparkContext
_names = register_tables(spark, cfg)
print(f"Spark {spark.version} with Delta; lake at {cfg.paths.lake}")
print("tables: " + (", ".join(_names) if _names else "none yet (run the stream first)"))
print('try: spark.table("live_sessions").show()  or  spark.sql("select count(*) from enriched_events").show()')
