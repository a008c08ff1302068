"""Rebuild `user_profiles` from scratch from enriched_events, session_features and the purchases.

Usage: ./spark-submit.sh jobs/profiles.py [--config PATH] [--check]

The stream keeps the profiles up to date by itself; this is for recovery or after changing
the profile settings. It takes the stream's checkpoint lock, so it refuses to run while the
stream runs (their writes would interleave). With --check it writes nothing: it rebuilds the
profiles and compares them with the streamed ones as of one micro-batch (exit 1 on a difference),
which it may do while the stream runs.
"""

import logging
import sys

import _bootstrap  # noqa: F401

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.core.spark import get_spark
from lib.lake.batch import LakeNotReadyError, rebuild_profiles
from lib.lake.checkpoint import CheckpointError, acquire_lock
from lib.lake.verify import check_profiles
from lib.stream.query import STREAM_CHECKPOINT

log = logging.getLogger("profiles")


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare a rebuild with the streamed profiles")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    spark = get_spark("streamrec-profiles", cfg=cfg)
    if args.check:
        try:
            check = check_profiles(spark, cfg)
        except LakeNotReadyError as exc:
            log.error("cannot check: %s", exc)
            return 3
        log.info(
            "user_profiles: %d streamed, %d rebuilt; %d missing, %d duplicated, %d differing",
            check.actual,
            check.expected,
            check.missing,
            check.duplicated,
            check.unexpected,
        )
        return 0 if check.ok else 1
    try:
        lock = acquire_lock(spark, cfg.paths.checkpoint(STREAM_CHECKPOINT))
    except CheckpointError as exc:
        log.error("not rebuilding: %s", exc)
        return 3
    try:
        log.info("rebuilt user_profiles: %d users", rebuild_profiles(spark, cfg))
    except LakeNotReadyError as exc:
        log.error("cannot rebuild: %s", exc)
        return 3
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
