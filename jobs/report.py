"""Print what the pipeline produced: rows per table, recent sessions, the live session, profile
and recommendations of the most active user, quarantine reasons, stream throughput, and where
the tables are.

Usage: ./spark-submit.sh jobs/report.py [--config PATH] [--user ID]
"""

import sys

import _bootstrap  # noqa: F401

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.core.spark import get_spark
from lib.lake import report


def show(title: str, df) -> None:
    print(f"\n== {title}")
    if df is None:
        print("(table not created yet)")
    else:
        df.show(truncate=False)


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--user", type=int, help="user whose live session to show (default: most active)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    spark = get_spark("streamrec-report", cfg=cfg)

    print("\n== rows per table")
    for name, rows, location in report.table_counts(spark, cfg):
        print(f"{name:<18} {'missing' if rows is None else rows:>10}  {location}")
    show("recent closed sessions (session_features)", report.recent_sessions(spark, cfg))
    user = args.user if args.user is not None else report.most_active_user(spark, cfg)
    if user is not None:
        show(f"live session of user {user} (live_sessions)", report.live_sessions_of(spark, cfg, user))
        show(f"profile of user {user} (user_profiles)", report.profile_of(spark, cfg, user))
        show(f"recommendations for user {user} (recommendations)", report.recommendations_of(spark, cfg, user))
        show(
            f"live recommendations for user {user} (live_recommendations)",
            report.recommendations_of(spark, cfg, user, live=True),
        )
    show("quarantine by reason", report.quarantine_reasons(spark, cfg))
    show("stream throughput (stream_metrics)", report.stream_throughput(spark, cfg))
    print(f"\nTables are Delta tables under {cfg.paths.lake}; explore them with ./pyspark.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
