"""Streamed profiles of buyers a micro-batch does not touch: they keep their totals (a batch used
to overwrite them with a purchases-only row whenever their top items differed from it)."""

from __future__ import annotations

from datetime import date

from lib.lake.verify import check_profiles
from lib.stream.query import run_available_now
from tests.helpers import make_config, read, write_lines, write_purchases

HEADER = "user_id,item_id,event_type,timestamp"


def test_a_buyer_absent_from_a_batch_keeps_the_totals_of_earlier_batches(spark, tmp_path):
    cfg = make_config(tmp_path, "stream.max_files_per_trigger=1")
    write_purchases(cfg.paths.purchases, [(1, 100, 10.0, date(2023, 5, 1)), (2, 200, 20.0, date(2023, 5, 2))])
    # User 1 views twelve items, so its top items are not its purchases alone; then only user 2 is active.
    first = [f"1,{item},view,2024-01-01 10:{item:02d}:00" for item in range(1, 13)] + ["2,5,click,2024-01-01 10:00:00"]
    write_lines(cfg, "activity-000001.csv", [HEADER, *first])
    write_lines(cfg, "activity-000002.csv", [HEADER, "2,6,view,2024-01-01 10:30:00"])
    run_available_now(spark, cfg)

    profiles = {row.user_id: row for row in read(spark, cfg, "user_profiles").collect()}
    assert profiles[1].num_events == 12 and profiles[1].num_views == 12
    assert profiles[1].past_purchases == 1 and len(profiles[1].top_items) == 10
    assert profiles[2].num_events == 2 and profiles[2].num_clicks == 1
    assert check_profiles(spark, cfg).ok
