"""Evaluate the models on MovieLens 100k, the protocol of the Microsoft Recommenders benchmark:
per-user random 75/25 split, k = 10, seen items removed, every rating an interaction.

MovieLens 100k (GroupLens, F. Maxwell Harper and Joseph A. Konstan, 2015) is not shipped
here: it is taken from the RecBole wheel on PyPI (recbole/dataset_example/ml-100k), fetched
into .cache/ on first use.

Usage: .venv/bin/python bench/movielens.py [--models ease,item_knn,als,popularity] [--set recommend.k=v]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
from pyspark.sql import functions as F

from lib.core.cli import setup_logging
from lib.core.config import load_config
from lib.core.schemas import PURCHASES_SCHEMA
from lib.core.spark import PROJECT_ROOT, get_spark
from lib.features.interactions import interactions_from
from lib.lake.report_files import markdown_table
from lib.recommend.evaluation import evaluate_models

RECBOLE = "recbole==1.2.1"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def ratings_file() -> Path:
    cache = PROJECT_ROOT / ".cache" / "movielens"
    target = cache / "ml-100k.inter"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", RECBOLE, "--no-deps", "-q", "-d", str(cache)], check=True
        )
        wheel = next(cache.glob("recbole-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read(MEMBER))
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="popularity,item_knn,ease,als")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    setup_logging("INFO")
    cfg = load_config(None, args.set)
    ratings = pd.read_csv(ratings_file(), sep="\t")
    ratings.columns = ["user_id", "item_id", "rating", "timestamp"]
    spark = get_spark("streamrec-movielens", {"spark.sql.shuffle.partitions": "4"})
    events = spark.createDataFrame(ratings[["user_id", "item_id", "timestamp"]].astype("int64")).select(
        F.col("user_id").cast("int"),
        F.col("item_id").cast("int"),
        F.lit("view").alias("event_type"),
        F.timestamp_seconds("timestamp").alias("event_ts"),
    )
    interactions = interactions_from(events, spark.createDataFrame([], PURCHASES_SCHEMA), cfg.recommend).persist()
    results = evaluate_models(spark, interactions, cfg.recommend, args.models.split(","), ["random"])
    print(
        markdown_table(
            results,
            [
                "split",
                "model",
                "k",
                "precision",
                "recall",
                "ndcg",
                "map",
                "hit_rate",
                "coverage",
                "users",
                "lambda",
                "seconds",
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
