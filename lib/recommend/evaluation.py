"""Offline evaluation of the models: held-out splits and ranking metrics.

Splits (per user, so every user is in both parts when they have at least two interactions):

- ``random``: a seeded random ``ratio`` of each user's interactions is for training;
- ``time``: the first ``ratio`` of each user's interactions by time (ties by item id).

Metrics at k over the users of the test part, seen (training) items removed from the
recommendations: precision, recall, NDCG and MAP from Spark's ``RankingEvaluator``; hit rate
(share of users with at least one relevant item in their top k) and catalogue coverage
(distinct recommended items / items in the training part).
"""

from __future__ import annotations

import logging
import time

from pyspark.ml.evaluation import RankingEvaluator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lib.core.config import RecommendConfig
from lib.core.schemas import ITEM_ID, RANK, USER_ID
from lib.features.interactions import SPLITS, split_per_user
from lib.recommend.models import fit_model, top_k_recommendations

log = logging.getLogger(__name__)

SPARK_METRICS = {
    "precision": "precisionAtK",
    "recall": "recallAtK",
    "ndcg": "ndcgAtK",
    "map": "meanAveragePrecisionAtK",
}


def ranking_metrics(recommended: DataFrame, relevant: DataFrame, k: int, catalogue_size: int) -> dict[str, float]:
    """Metrics at ``k`` of ``recommended`` (``user_id, rank, item_id``) against ``relevant``
    (``user_id, item_id``), over the users of ``relevant``."""
    labels = relevant.groupBy(USER_ID).agg(F.collect_list(F.col(ITEM_ID).cast("double")).alias("label"))
    predictions = (
        recommended.where(F.col(RANK) <= k)
        .groupBy(USER_ID)
        .agg(
            F.transform(
                F.array_sort(F.collect_list(F.struct(RANK, ITEM_ID))), lambda r: r[ITEM_ID].cast("double")
            ).alias("prediction")
        )
    )
    scored = (
        labels.join(predictions, USER_ID, "left")
        .withColumn("prediction", F.coalesce("prediction", F.array().cast("array<double>")))
        .persist()
    )
    try:
        metrics = {
            name: RankingEvaluator(metricName=spark_name, k=k, labelCol="label", predictionCol="prediction").evaluate(
                scored
            )
            for name, spark_name in SPARK_METRICS.items()
        }
        metrics["hit_rate"] = scored.agg(
            F.avg((F.size(F.array_intersect("prediction", "label")) > 0).cast("double"))
        ).first()[0]
        metrics["users"] = scored.count()
    finally:
        scored.unpersist()
    recommended_items = recommended.where(F.col(RANK) <= k).select(ITEM_ID).distinct().count()
    metrics["coverage"] = recommended_items / catalogue_size if catalogue_size else 0.0
    return metrics


def evaluate_models(
    spark: SparkSession,
    interactions: DataFrame,
    rec: RecommendConfig,
    models: list[str],
    splits: list[str] = list(SPLITS),
    ratio: float = 0.75,
) -> list[dict]:
    """Train every model on each split's training part and score it on the test part."""
    results = []
    for split in splits:
        train, test = split_per_user(interactions, split, ratio, rec.seed)
        train, test = train.persist(), test.persist()
        catalogue = train.select(ITEM_ID).distinct().count()
        test_users = test.select(USER_ID).distinct()
        for model in models:
            started = time.monotonic()
            trained = fit_model(spark, train, rec, model)
            user_scores = trained.user_scores.persist()
            recommended = top_k_recommendations(
                user_scores, trained.popularity, test_users, train, rec.top_k, rec.exclude_seen
            )
            metrics = ranking_metrics(recommended, test, rec.top_k, catalogue)
            user_scores.unpersist()
            row = {
                "split": split,
                "model": trained.name,
                "k": rec.top_k,
                **metrics,
                "seconds": time.monotonic() - started,
            }
            if "lambda" in trained.params:
                row["lambda"] = trained.params["lambda"]
            log.info(
                "%s split, %s: %s",
                split,
                trained.name,
                {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
            )
            results.append(row)
        train.unpersist()
        test.unpersist()
    return results
