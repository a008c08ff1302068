"""Train the recommendation model on everything in the lake and write `recommendations`.

Usage: ./spark-submit.sh jobs/train.py [--config PATH] [--model popularity|item_knn|ease|als]

Commits a new model version under <lake>/models/ (a running stream switches to it at its next
micro-batch) and rewrites the `recommendations` table: recommend.top_k items per known user.
"""

import json
import logging
import sys

import _bootstrap  # noqa: F401

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.core.config import MODELS
from lib.core.spark import WHOLE_LAKE_CONF, get_spark
from lib.lake.batch import LakeNotReadyError, train_and_publish

log = logging.getLogger("train")


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, help="override recommend.model")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    spark = get_spark("streamrec-train", WHOLE_LAKE_CONF, cfg)
    try:
        summary = train_and_publish(spark, cfg, args.model)
    except LakeNotReadyError as exc:
        log.error("cannot train: %s", exc)
        return 3
    log.info("trained: %s", json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
