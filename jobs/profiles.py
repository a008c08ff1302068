"""Rebuild `user_profiles` from scratch from enriched_events, session_features and the purchases.

Usage: ./spark-submit.sh jobs/profiles.py [--config PATH]

The stream keeps the profiles up to date by itself; this is for recovery or after changing
the profile settings. It takes the stream's checkpoint lock, so it refuses to run while the
stream runs (their writes would interleave).
"""

import logging
import sys

import _bootstrap  # noqa: F401

from lib.batch import LakeNotReadyError, rebuild_profiles
from lib.checkpoint import CheckpointError, acquire_lock
from lib.cli import base_parser, config_from_args, setup_logging
from lib.spark import get_spark
from lib.stream import STREAM_CHECKPOINT

log = logging.getLogger("profiles")


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    spark = get_spark("streamrec-profiles")
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
