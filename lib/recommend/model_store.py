"""Versioned model artifacts under ``<lake>/models/<version>/``.

A version folder holds the model's parts as Parquet (``user_scores``, ``item_neighbours``,
``popularity``, ``sessions``) and ``metadata.json``; it counts once its ``_COMMITTED`` marker exists, so a
reader never sees half a model. Versions sort by time (``20261126T101500123456Z-ease``): the
latest committed one is the current model, which the stream picks up between micro-batches
without restarting. The newest ``KEEP_VERSIONS`` are kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

from lib.core.config import Config
from lib.core.fs import HadoopFS
from lib.core.schemas import ITEM_ID, SCORE
from lib.recommend.models import ITEM_NEIGHBOURS_SCHEMA, USER_SCORES_SCHEMA, TrainedModel
from lib.recommend.session_knn import SESSIONS_SCHEMA

log = logging.getLogger(__name__)

MODELS_DIR = "models"
COMMITTED = "_COMMITTED"
KEEP_VERSIONS = 3
POPULARITY_SCHEMA = StructType([StructField(ITEM_ID, IntegerType()), StructField(SCORE, DoubleType())])
_PART_SCHEMAS = {
    "user_scores": USER_SCORES_SCHEMA,
    "item_neighbours": ITEM_NEIGHBOURS_SCHEMA,
    "popularity": POPULARITY_SCHEMA,
    "sessions": SESSIONS_SCHEMA,
}


@dataclass
class StoredModel:
    version: str
    user_scores: DataFrame
    item_neighbours: DataFrame
    popularity: DataFrame
    sessions: DataFrame
    metadata: dict = field(default_factory=dict)


class ModelStore:
    """Example::

    store = ModelStore.for_config(spark, cfg)
    version = store.save(trained, {"interactions": 1234})
    model = store.load(store.latest_version())
    """

    def __init__(self, spark: SparkSession, root: str):
        self.spark = spark
        self.root = root.rstrip("/")
        self._fs = HadoopFS(spark)

    @classmethod
    def for_config(cls, spark: SparkSession, cfg: Config) -> "ModelStore":
        return cls(spark, cfg.paths.table(MODELS_DIR))

    def _dir(self, version: str) -> str:
        return f"{self.root}/{version}"

    def versions(self) -> list[str]:
        """Committed versions, oldest first."""
        names = [n for n in self._fs.list_names(self.root) if not n.startswith((".", "_"))]
        return sorted(n for n in names if self._fs.exists(f"{self._dir(n)}/{COMMITTED}"))

    def latest_version(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def save(self, model: TrainedModel, metadata: dict) -> str:
        """Write the model's parts, then commit the version; returns it."""
        version = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{model.name}"
        parts = {
            "user_scores": model.user_scores,
            "item_neighbours": model.item_neighbours,
            "popularity": model.popularity,
            "sessions": model.sessions,
        }
        for name, df in parts.items():
            if df is None:
                df = self.spark.createDataFrame([], _PART_SCHEMAS[name])
            df.select(*_PART_SCHEMAS[name].fieldNames()).write.mode("overwrite").parquet(f"{self._dir(version)}/{name}")
        document = {"version": version, "model": model.name, "params": model.params, **metadata}
        self._fs.create_new(f"{self._dir(version)}/metadata.json", json.dumps(document, indent=2, default=str))
        self._fs.create_new(f"{self._dir(version)}/{COMMITTED}", version)
        for old in self.versions()[:-KEEP_VERSIONS]:
            self._fs.delete(self._dir(old), recursive=True)
        log.info("model %s committed under %s", version, self.root)
        return version

    def load(self, version: str) -> StoredModel:
        parts = {name: self._read_part(version, name) for name in _PART_SCHEMAS}
        metadata = json.loads(self._fs.read_text(f"{self._dir(version)}/metadata.json") or "{}")
        return StoredModel(version, metadata=metadata, **parts)

    def _read_part(self, version: str, name: str) -> DataFrame:
        path, schema = f"{self._dir(version)}/{name}", _PART_SCHEMAS[name]
        if not self._fs.exists(path):  # a version written before the part existed
            return self.spark.createDataFrame([], schema)
        return self.spark.read.schema(schema).parquet(path)
