"""Verify the lake: against the generator's ground truth (missing, duplicated, unexpected rows), or
without one, the invariants the tables hold by themselves (one row per key, every table named).

Usage: ./spark-submit.sh jobs/verify.py [--manifest PATH] [--config PATH]   (exit 1 on any difference)
"""

import sys

import _bootstrap  # noqa: F401

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.core.spark import get_spark
from lib.lake.verify import check_lake, compare_lakes, read_manifest, verify


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--manifest", help="JSON lines written by jobs/generate.py events --manifest")
    parser.add_argument("--against-lake", help="also compare live_sessions and session_features with this lake's")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    spark = get_spark("streamrec-verify", cfg=cfg)
    # Lakes checked against a manifest often share one metastore (test and chaos runs): the names
    # then point at the last lake that registered, which says nothing about this one.
    checks = check_lake(spark, cfg, names=not args.manifest)
    if args.manifest:
        checks += verify(spark, cfg, read_manifest(spark, args.manifest))
    if args.against_lake:
        checks += compare_lakes(spark, cfg, args.against_lake)
    print(f"{'check':<40}{'expected':>10}{'actual':>10}{'missing':>9}{'duplicated':>11}{'unexpected':>11}")
    for c in checks:
        print(f"{c.table:<40}{c.expected:>10}{c.actual:>10}{c.missing:>9}{c.duplicated:>11}{c.unexpected:>11}")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
