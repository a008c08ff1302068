"""Recommendation models over user-item interactions (``lib.features.interactions``).

Every model yields the same parts, so the batch job, the evaluation and the stream use them
alike (``TrainedModel``):

- ``user_scores``: the best ``recommend.candidates`` items per user with a score;
- ``item_neighbours``: for each item, its most related items with a weight (the live
  re-ranking scores a session's items through them);
- ``popularity``: every item with the share of users who interacted with it (the fallback).

Models (``recommend.model``):

- ``popularity``: most-interacted items first.
- ``item_knn``: cosine similarity of items' user vectors (co-occurrence counted in Spark),
  ``recommend.neighbours`` kept per item; a user's score of an item sums the similarities to
  the items they interacted with, weighted by interaction strength.
- ``ease``: EASE (Steck, 2019), a linear item-item model with a closed form,
  ``B = I - P / diag(P)``, ``P = (X'X + lambda I)^-1``. The Gram matrix ``X'X`` is computed in
  Spark; the dense items x items system is solved on the driver, so it is limited to
  ``recommend.ease_max_items`` items (8,000 by default: 0.5 GB for the inverse). Above that,
  ``item_knn`` is used instead. Scoring runs in Spark (``mapInPandas``), the weights broadcast.
- ``als``: Spark MLlib's implicit-feedback ALS (Hu, Koren, Volinsky 2008).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

from lib.core.config import RecommendConfig
from lib.core.schemas import ITEM_ID, RANK, SCORE, STRENGTH, USER_ID
from lib.features.interactions import split_per_user

log = logging.getLogger(__name__)

NEIGHBOUR_ID = "neighbour_id"
WEIGHT = "weight"

USER_SCORES_SCHEMA = StructType(
    [StructField(USER_ID, IntegerType()), StructField(ITEM_ID, IntegerType()), StructField(SCORE, DoubleType())]
)
ITEM_NEIGHBOURS_SCHEMA = StructType(
    [StructField(ITEM_ID, IntegerType()), StructField(NEIGHBOUR_ID, IntegerType()), StructField(WEIGHT, DoubleType())]
)

# EASE penalties tried by "auto": lambda as multiples of the mean diagonal of X'X (the mean
# item popularity), which makes the search independent of the data's scale, and the
# dropout-style penalty proportional to each item's own diagonal (EDLAE, Steck 2020), which
# keeps popular items from dominating. On MovieLens 100k this pair beats lambda alone.
EASE_LAMBDA_FACTORS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
EASE_DROPOUTS = (0.0, 0.5, 0.67)
# Scores divided by popularity^beta (popularity = the item's diagonal of X'X): a mild
# correction of EASE's bias to popular items.
EASE_POPULARITY_EXPONENTS = (0.0, 0.1, 0.2)
# Above this many items the search tries fewer penalties (each costs a dense n^3 product).
EASE_FULL_SEARCH_MAX_ITEMS = 3000
EASE_VALIDATION_USERS = 3000


@dataclass
class TrainedModel:
    name: str
    user_scores: DataFrame
    item_neighbours: DataFrame
    popularity: DataFrame
    params: dict = field(default_factory=dict)
    sessions: DataFrame | None = None  # past sessions for the live session neighbourhood


def best_per_key(df: DataFrame, key: str | list[str], n: int, order: list) -> DataFrame:
    """The first ``n`` rows of each ``key`` by ``order``, with their ``rank`` (1 = first)."""
    window = Window.partitionBy(*([key] if isinstance(key, str) else key)).orderBy(*order)
    return df.withColumn(RANK, F.row_number().over(window)).where(F.col(RANK) <= n)


def item_popularity(interactions: DataFrame) -> DataFrame:
    """``item_id, score``: the share of users who interacted with the item."""
    users = interactions.select(USER_ID).distinct().count()
    return interactions.groupBy(ITEM_ID).agg((F.count(F.lit(1)) / F.lit(float(max(users, 1)))).alias(SCORE))


def item_cooccurrence(interactions: DataFrame) -> DataFrame:
    """``item_id, neighbour_id, weight``: ``sum over users of strength_i * strength_j`` (X'X),
    diagonal included. Each user contributes (items of the user)^2 pairs."""
    left = interactions.select(USER_ID, F.col(ITEM_ID), F.col(STRENGTH).alias("_a"))
    right = interactions.select(USER_ID, F.col(ITEM_ID).alias(NEIGHBOUR_ID), F.col(STRENGTH).alias("_b"))
    return left.join(right, USER_ID).groupBy(ITEM_ID, NEIGHBOUR_ID).agg(F.sum(F.col("_a") * F.col("_b")).alias(WEIGHT))


def cosine_neighbours(cooccurrence: DataFrame, k: int) -> DataFrame:
    """The ``k`` most similar items of each item by cosine similarity (self excluded)."""
    norms = cooccurrence.where(F.col(ITEM_ID) == F.col(NEIGHBOUR_ID)).select(
        F.col(ITEM_ID).alias("_i"), F.sqrt(WEIGHT).alias("_ni")
    )
    similar = (
        cooccurrence.where(F.col(ITEM_ID) != F.col(NEIGHBOUR_ID))
        .join(norms, F.col(ITEM_ID) == F.col("_i"))
        .drop("_i")
        .join(norms.select(F.col("_i").alias("_j"), F.col("_ni").alias("_nj")), F.col(NEIGHBOUR_ID) == F.col("_j"))
        .select(ITEM_ID, NEIGHBOUR_ID, (F.col(WEIGHT) / (F.col("_ni") * F.col("_nj"))).alias(WEIGHT))
    )
    return best_per_key(similar, ITEM_ID, k, [F.col(WEIGHT).desc(), F.col(NEIGHBOUR_ID)]).drop(RANK)


def score_by_neighbours(interactions: DataFrame, neighbours: DataFrame) -> DataFrame:
    """``user_id, item_id, score``: each item's neighbours weighted by the user's strength on it."""
    return (
        interactions.select(USER_ID, ITEM_ID, STRENGTH)
        .join(neighbours, ITEM_ID)
        .groupBy(USER_ID, F.col(NEIGHBOUR_ID).alias(ITEM_ID))
        .agg(F.sum(F.col(STRENGTH) * F.col(WEIGHT)).alias(SCORE))
    )


def without_seen(scores: DataFrame, interactions: DataFrame) -> DataFrame:
    return scores.join(interactions.select(USER_ID, ITEM_ID), [USER_ID, ITEM_ID], "left_anti")


def top_candidates(scores: DataFrame, n: int) -> DataFrame:
    return best_per_key(scores, USER_ID, n, [F.col(SCORE).desc(), F.col(ITEM_ID)]).select(USER_ID, ITEM_ID, SCORE)


# --- EASE -----------------------------------------------------------------------------------


def dense_gram(interactions: DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """X'X as a dense float64 matrix indexed like ``item_ids`` (sorted)."""
    cells = item_cooccurrence(interactions).toPandas()
    gram = np.zeros((len(item_ids), len(item_ids)))
    if len(cells):
        rows = np.searchsorted(item_ids, cells[ITEM_ID].to_numpy())
        cols = np.searchsorted(item_ids, cells[NEIGHBOUR_ID].to_numpy())
        gram[rows, cols] = cells[WEIGHT].to_numpy()
    return gram


def ease_weights(
    gram: np.ndarray, penalty: float, dropout: float = 0.0, popularity_exponent: float = 0.0
) -> np.ndarray:
    """EASE's item-item weights ``B`` (zero diagonal) for the Gram matrix ``X'X``.

    ``penalty`` is the L2 penalty lambda; ``dropout`` in [0, 1) adds ``dropout / (1 - dropout)``
    times each item's own diagonal entry to its penalty (EDLAE); column j is divided by
    ``diag(X'X)_j ** popularity_exponent``.
    """
    diagonal = penalty + dropout / (1.0 - dropout) * np.diag(gram)
    precision = np.linalg.inv(gram + np.diag(diagonal))
    weights = -precision / np.diag(precision)
    np.fill_diagonal(weights, 0.0)
    return weights / _popularity_scale(gram, popularity_exponent)


def _popularity_scale(gram: np.ndarray, exponent: float) -> np.ndarray:
    return np.maximum(np.diag(gram), 1e-12) ** exponent


def _ndcg_at_k(scores: np.ndarray, held_out: list[np.ndarray], k: int) -> float:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for row, relevant in zip(top, held_out):
        gains = np.isin(row, relevant)
        ideal = discounts[: min(len(relevant), k)].sum()
        total += (gains * discounts).sum() / ideal
    return total / max(len(held_out), 1)


def choose_ease_penalty(
    interactions: DataFrame, item_ids: np.ndarray, k: int, seed: int
) -> tuple[float, float, float, dict]:
    """Pick EASE's ``(lambda factor, dropout, popularity exponent)`` by NDCG@k on the interactions a
    random per-user split holds out (``split_per_user``, 80% to train), as ``jobs/evaluate.py``
    splits. The factor multiplies the mean diagonal of whatever Gram matrix the model is then
    fitted on.

    One eigendecomposition per dropout serves every lambda:
    ``(A + lambda I)^-1 = V diag(1 / (e + lambda)) V'`` for ``A = G + c diag(G)``.
    """
    train, held = split_per_user(interactions.select(USER_ID, ITEM_ID, STRENGTH), "random", 0.8, seed)
    train = train.persist()
    try:
        gram = dense_gram(train, item_ids)
        sample = held.select(USER_ID).distinct().orderBy(F.rand(seed)).limit(EASE_VALIDATION_USERS)
        rows = (
            train.withColumn("_held", F.lit(False))
            .unionByName(held.withColumn("_held", F.lit(True)))
            .join(sample, USER_ID)
            .toPandas()
        )
    finally:
        train.unpersist()
    if rows.empty:
        return EASE_LAMBDA_FACTORS[0], 0.0, 0.0, {}
    users = np.sort(rows[USER_ID].unique())
    user_pos = np.searchsorted(users, rows[USER_ID].to_numpy())
    item_pos = np.searchsorted(item_ids, rows[ITEM_ID].to_numpy())
    is_held = rows["_held"].to_numpy()
    history = np.zeros((len(users), len(item_ids)))
    history[user_pos[~is_held], item_pos[~is_held]] = rows[STRENGTH].to_numpy()[~is_held]
    held_out = [item_pos[is_held & (user_pos == u)] for u in range(len(users))]

    small = len(item_ids) <= EASE_FULL_SEARCH_MAX_ITEMS
    factors = EASE_LAMBDA_FACTORS if small else (2.0, 8.0)
    dropouts = EASE_DROPOUTS if small else (0.0, 0.67)
    mean_diag = float(np.mean(np.diag(gram))) or 1.0
    ndcg: dict[tuple[float, float, float], float] = {}
    for dropout in dropouts:
        eigenvalues, eigenvectors = np.linalg.eigh(gram + np.diag(dropout / (1.0 - dropout) * np.diag(gram)))
        for factor in factors:
            precision = (eigenvectors / (eigenvalues + factor * mean_diag)) @ eigenvectors.T
            weights = -precision / np.diag(precision)
            np.fill_diagonal(weights, 0.0)
            raw_scores = history @ weights
            raw_scores[history > 0] = -np.inf
            for exponent in EASE_POPULARITY_EXPONENTS:
                scores = raw_scores / _popularity_scale(gram, exponent)
                ndcg[(factor, dropout, exponent)] = round(float(_ndcg_at_k(scores, held_out, k)), 5)
    factor, dropout, exponent = max(ndcg, key=ndcg.get)  # the first of equals, in search order
    # Named as the model's params store them: "<lambda factor>x/<dropout>/<popularity exponent>".
    results = {f"{f:g}x/{d:g}/{e:g}": v for (f, d, e), v in ndcg.items()}
    log.info(
        "EASE penalty search (NDCG@%d on %d validation users; lambda factor/dropout/popularity exponent): "
        "%s -> %gx/%g/%g",
        k,
        len(users),
        results,
        factor,
        dropout,
        exponent,
    )
    return factor, dropout, exponent, results


def score_dense(
    spark: SparkSession, interactions: DataFrame, weights: np.ndarray, item_ids: np.ndarray, n: int, exclude_seen: bool
) -> DataFrame:
    """Top ``n`` items per user of ``history @ weights``, computed in Spark partitions."""
    shared = spark.sparkContext.broadcast((item_ids, weights.astype(np.float32)))

    def score_users(batches):
        ids, matrix = shared.value
        for users in batches:
            for start in range(0, len(users), 512):
                chunk = users.iloc[start : start + 512]
                history = np.zeros((len(chunk), len(ids)), dtype=np.float32)
                for row, (items, strengths) in enumerate(zip(chunk["items"], chunk["strengths"])):
                    history[row, np.searchsorted(ids, items)] = strengths
                scores = history @ matrix
                if exclude_seen:
                    scores[history > 0] = -np.inf
                keep = min(n, len(ids))
                best = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
                best_scores = np.take_along_axis(scores, best, axis=1)
                frame = pd.DataFrame(
                    {
                        USER_ID: np.repeat(chunk[USER_ID].to_numpy(), keep).astype(np.int32),
                        ITEM_ID: ids[best.ravel()].astype(np.int32),
                        SCORE: best_scores.ravel().astype(np.float64),
                    }
                )
                yield frame[np.isfinite(frame[SCORE])]

    histories = interactions.groupBy(USER_ID).agg(
        F.collect_list(ITEM_ID).alias("items"), F.collect_list(STRENGTH).alias("strengths")
    )
    return histories.mapInPandas(score_users, USER_SCORES_SCHEMA)


def ease_neighbours(spark: SparkSession, weights: np.ndarray, item_ids: np.ndarray, k: int) -> DataFrame:
    """The ``k`` largest positive weights of each item's row of ``B``."""
    keep = min(k, max(len(item_ids) - 1, 1))
    best = np.argpartition(-weights, keep - 1, axis=1)[:, :keep]
    values = np.take_along_axis(weights, best, axis=1)
    frame = pd.DataFrame(
        {
            ITEM_ID: np.repeat(item_ids, keep).astype(np.int32),
            NEIGHBOUR_ID: item_ids[best.ravel()].astype(np.int32),
            WEIGHT: values.ravel().astype(np.float64),
        }
    )
    frame = frame[(frame[WEIGHT] > 0) & (frame[ITEM_ID] != frame[NEIGHBOUR_ID])]
    return spark.createDataFrame(frame, ITEM_NEIGHBOURS_SCHEMA)


# --- fitting --------------------------------------------------------------------------------


def fit_model(
    spark: SparkSession, interactions: DataFrame, rec: RecommendConfig, model: str | None = None
) -> TrainedModel:
    """Train ``model`` (default ``rec.model``) on ``interactions`` (``INTERACTIONS_SCHEMA``)."""
    name = model or rec.model
    if name not in MODEL_FITTERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_FITTERS)}")
    interactions = interactions.select(USER_ID, ITEM_ID, STRENGTH).persist()
    item_ids = np.sort(np.array([r[0] for r in interactions.select(ITEM_ID).distinct().collect()], dtype=np.int64))
    if name == "ease" and len(item_ids) > rec.ease_max_items:
        log.warning(
            "EASE needs a dense %d x %d system, above recommend.ease_max_items = %d; using item_knn instead",
            len(item_ids),
            len(item_ids),
            rec.ease_max_items,
        )
        name = "item_knn"
    params: dict = {"items": len(item_ids)}
    user_scores, neighbours = MODEL_FITTERS[name](spark, interactions, item_ids, rec, params)
    return TrainedModel(name, user_scores, neighbours, item_popularity(interactions), params)


def _without_seen_if_configured(scores: DataFrame, interactions: DataFrame, rec: RecommendConfig) -> DataFrame:
    return without_seen(scores, interactions) if rec.exclude_seen else scores


def _cosine_item_neighbours(interactions: DataFrame, rec: RecommendConfig) -> DataFrame:
    return cosine_neighbours(item_cooccurrence(interactions), rec.neighbours)


def _fit_ease(spark, interactions, item_ids, rec, params):
    gram = dense_gram(interactions, item_ids)
    penalty, dropout, exponent = rec.ease_lambda_value, rec.ease_dropout, 0.0
    if penalty is None:
        factor, dropout, exponent, params["penalty_search_ndcg"] = choose_ease_penalty(
            interactions, item_ids, rec.top_k, rec.seed
        )
        penalty = factor * (float(np.mean(np.diag(gram))) or 1.0)
    params.update({"lambda": round(penalty, 3), "dropout": dropout, "popularity_exponent": exponent})
    weights = ease_weights(gram, penalty, dropout, exponent)
    del gram
    neighbours = ease_neighbours(spark, weights, item_ids, rec.neighbours)
    return score_dense(spark, interactions, weights, item_ids, rec.candidates, rec.exclude_seen), neighbours


def _fit_item_knn(spark, interactions, item_ids, rec, params):
    neighbours = _cosine_item_neighbours(interactions, rec)
    scores = _without_seen_if_configured(score_by_neighbours(interactions, neighbours), interactions, rec)
    return top_candidates(scores, rec.candidates), neighbours


def _fit_als(spark, interactions, item_ids, rec, params):
    params.update(rank=rec.als_rank, max_iter=rec.als_max_iter, reg=rec.als_reg, alpha=rec.als_alpha)
    neighbours = _cosine_item_neighbours(interactions, rec)
    return _als_scores(interactions, rec, len(item_ids)), neighbours


def _fit_popularity(spark, interactions, item_ids, rec, params):
    # Every recommendation comes from the popularity fill of top_k_recommendations; the item
    # neighbours still serve the live re-ranking.
    neighbours = _cosine_item_neighbours(interactions, rec)
    return spark.createDataFrame([], USER_SCORES_SCHEMA), neighbours


# How each model of ``recommend.model`` (lib.core.config.MODELS) is fitted: ``(spark, interactions,
# sorted item ids, config, params to record) -> (user scores, item neighbours)``.
ModelFit = Callable[[SparkSession, DataFrame, np.ndarray, RecommendConfig, dict], tuple[DataFrame, DataFrame]]
MODEL_FITTERS: dict[str, ModelFit] = {
    "ease": _fit_ease,
    "item_knn": _fit_item_knn,
    "als": _fit_als,
    "popularity": _fit_popularity,
}


def _als_scores(interactions: DataFrame, rec: RecommendConfig, num_items: int) -> DataFrame:
    from pyspark.ml.recommendation import ALS

    als = ALS(
        rank=rec.als_rank,
        maxIter=rec.als_max_iter,
        regParam=rec.als_reg,
        alpha=rec.als_alpha,
        implicitPrefs=True,
        userCol=USER_ID,
        itemCol=ITEM_ID,
        ratingCol=STRENGTH,
        coldStartStrategy="drop",
        seed=rec.seed,
    )
    fitted = als.fit(interactions)
    most_seen = interactions.groupBy(USER_ID).count().agg(F.max("count")).first()[0] or 0
    depth = min(num_items, rec.candidates + (most_seen if rec.exclude_seen else 0))
    scores = (
        fitted.recommendForAllUsers(depth)
        .select(USER_ID, F.explode("recommendations").alias("r"))
        .select(USER_ID, F.col(f"r.{ITEM_ID}").alias(ITEM_ID), F.col("r.rating").cast("double").alias(SCORE))
    )
    return top_candidates(_without_seen_if_configured(scores, interactions, rec), rec.candidates)


def top_k_recommendations(
    user_scores: DataFrame,
    popularity: DataFrame,
    users: DataFrame,
    seen: DataFrame,
    k: int,
    exclude_seen: bool = True,
) -> DataFrame:
    """``user_id, rank, item_id, score``: exactly ``k`` rows per user of ``users`` whenever
    ``k`` candidate items exist: the model's candidates first, then popular items.

    :param seen: ``user_id, item_id`` pairs never to recommend when ``exclude_seen``.
    """
    wanted = users.select(USER_ID).distinct()
    model_part = user_scores.join(wanted, USER_ID, "left_semi").select(
        USER_ID, ITEM_ID, SCORE, F.lit(0).alias("_source")
    )
    if exclude_seen:
        model_part = without_seen(model_part, seen)
    counts = model_part.groupBy(USER_ID).count()
    short = wanted.join(counts, USER_ID, "left").where(F.coalesce(F.col("count"), F.lit(0)) < k).select(USER_ID)
    # Enough popular items that every short user still has k after removing what they saw.
    depth = k + (
        seen.join(short, USER_ID, "left_semi").groupBy(USER_ID).count().agg(F.max("count")).first()[0] or 0
        if exclude_seen
        else 0
    )
    popular = best_per_key(
        popularity.withColumn("_all", F.lit(0)), "_all", depth + k, [F.col(SCORE).desc(), F.col(ITEM_ID)]
    ).select(ITEM_ID, SCORE)
    fill = short.crossJoin(popular).withColumn("_source", F.lit(1))
    if exclude_seen:
        fill = without_seen(fill, seen)
    candidates = model_part.unionByName(fill.select(USER_ID, ITEM_ID, SCORE, "_source"))
    # A popular item may also be a model candidate: keep its first appearance.
    deduplicated = best_per_key(candidates, [USER_ID, ITEM_ID], 1, [F.col("_source")]).drop(RANK)
    return best_per_key(deduplicated, USER_ID, k, [F.col("_source"), F.col(SCORE).desc(), F.col(ITEM_ID)]).select(
        USER_ID, F.col(RANK).cast("int").alias(RANK), ITEM_ID, SCORE
    )
