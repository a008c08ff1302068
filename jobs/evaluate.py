"""Evaluate every model on held-out interactions from the lake, side by side.

Usage: ./spark-submit.sh jobs/evaluate.py [--config PATH] [--models ease,item_knn,...]
                                          [--splits random,time] [--ratio 0.75] [--out DIR]

For each split (per-user random, per-user by time) each model is trained on the first part and
scored on the rest: precision, recall, NDCG, MAP at recommend.top_k, hit rate and coverage.
Prints a table and writes metrics.json, metrics.md and metrics.png to --out.
"""

import logging
import sys

import _bootstrap  # noqa: F401

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.core.config import MODELS
from lib.core.spark import WHOLE_LAKE_CONF, get_spark
from lib.features.interactions import SPLITS
from lib.lake.batch import LakeNotReadyError, lake_interactions
from lib.lake.report_files import write_evaluation
from lib.recommend.evaluation import evaluate_models

log = logging.getLogger("evaluate")


def names(text: str, allowed) -> list[str]:
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = set(chosen) - set(allowed)
    if unknown:
        raise SystemExit(f"unknown name(s) {sorted(unknown)}; choose from {', '.join(allowed)}")
    return chosen


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--splits", default=",".join(SPLITS))
    parser.add_argument("--ratio", type=float, default=0.75, help="share of each user's interactions used for training")
    parser.add_argument("--out", default="data/evaluation", help="folder for metrics.json/.md/.png")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    spark = get_spark("streamrec-evaluate", WHOLE_LAKE_CONF, cfg)
    try:
        interactions = lake_interactions(spark, cfg).persist()
    except LakeNotReadyError as exc:
        log.error("cannot evaluate: %s", exc)
        return 3
    results = evaluate_models(
        spark, interactions, cfg.recommend, names(args.models, MODELS), names(args.splits, SPLITS), args.ratio
    )
    print(write_evaluation(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
