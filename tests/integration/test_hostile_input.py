"""Hostile files in one run: the stream keeps going, every valid row arrives unchanged, every
invalid row is quarantined with the expected reason, nothing is coerced; a symbolic link out
of the watched folder is rejected and its content not kept; what the engine creates is for
its owner only."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from lib.stream.query import run_available_now
from tests.helpers import make_config, read, write_lines

H = "user_id,item_id,event_type,timestamp"
TS = "2024-01-01 10:00:00"

# file -> [(line, expected reason code or None for a valid row)]
CASES = {
    "types.csv": [
        (H, "header"),
        (f"abc,1,view,{TS}", "bad_user_id"),
        (f"1,x,view,{TS}", "bad_item_id"),
        (f"1,1.5,view,{TS}", "bad_item_id"),
        (f"1,2,view,{TS}", None),
    ],
    "widths.csv": [
        (H, "header"),
        ("1,2,view", "field_count"),
        (f"1,2,view,{TS},extra", "field_count"),
        (f"1,3,click,{TS}", None),
    ],
    "reordered.csv": [("timestamp,event_type,item_id,user_id", "header"), (f"{TS},Click ,4,2", None)],
    "extra_column.csv": [(f"{H},note", "header"), (f"3,5,view,{TS},hello", None)],
    "stamps.csv": [
        (H, "header"),
        ("1,6,view,01/01/2024 10:00", "bad_timestamp"),
        ("1,6,view,", "missing_timestamp"),
        ("1,6,view,2024-02-30 10:00:00", "bad_timestamp"),
        ("1,7,view,2024-01-01T10:00:00.250000", None),
    ],
    "types_of_event.csv": [
        (H, "header"),
        (f"1,8,purchase,{TS}", "unknown_event_type"),
        (f"1,8,,{TS}", "missing_event_type"),
    ],
    "ids.csv": [(H, "header"), (f"-1,9,view,{TS}", "non_positive_user_id"), (f"1,0,view,{TS}", "non_positive_item_id")],
    "quotes.csv": [
        (H, "header"),
        (f'"4","10","add_to_cart","{TS}"', None),
        (f'4,"1""1",view,{TS}', "bad_item_id"),
        ('4,12,"vi', "field_count"),
        (f'ew",{TS}', "field_count"),
    ],
}
REJECTED_FILE = ("no_user.csv", ["item_id,event_type,timestamp", f"1,view,{TS}", f"2,view,{TS}"])


def test_hostile_files_never_stop_the_stream_and_every_row_is_accounted_for(spark, tmp_path):
    cfg = make_config(tmp_path, "stream.max_files_per_trigger=20", "stream.max_line_chars=200")
    for name, lines in CASES.items():
        write_lines(cfg, name, [line for line, _ in lines])
    write_lines(cfg, REJECTED_FILE[0], REJECTED_FILE[1])
    incoming = Path(cfg.paths.events_dir)
    (incoming / "bom.csv").write_bytes(("\ufeff" + H + f"\n5,13,view,{TS}\n").encode("utf-8"))
    (incoming / "empty.csv").write_bytes(b"")
    (incoming / "header_only.csv").write_text(H + "\n")
    (incoming / "latin1.csv").write_bytes(f"{H}\n6,14,view,{TS}\n6,15,caf\xe9,{TS}\n".encode("latin-1"))
    (incoming / "long_line.csv").write_text(f"{H}\n7,16,view,{TS}\n7,17,view,{TS}{' ' * 300}\n")
    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text(f"{H}\n8,18,view,{TS}\n")
    (incoming / "link.csv").symlink_to(secret)

    run_available_now(spark, cfg)  # raises if the query terminated

    enriched = Counter(
        (os.path.basename(r.source_file), r.user_id, r.item_id, r.event_type, r.event_ts.isoformat(sep=" "))
        for r in read(spark, cfg, "enriched_events").collect()
    )
    assert enriched == Counter(
        {
            ("types.csv", 1, 2, "view", TS): 1,
            ("widths.csv", 1, 3, "click", TS): 1,
            ("reordered.csv", 2, 4, "click", TS): 1,  # case and spaces of the event type are not significant
            ("extra_column.csv", 3, 5, "view", TS): 1,
            ("stamps.csv", 1, 7, "view", "2024-01-01 10:00:00.250000"): 1,
            ("quotes.csv", 4, 10, "add_to_cart", TS): 1,
            ("bom.csv", 5, 13, "view", TS): 1,
            ("latin1.csv", 6, 14, "view", TS): 1,  # only the undecodable line is rejected
            ("long_line.csv", 7, 16, "view", TS): 1,
        }
    )
    quarantine = Counter(
        (os.path.basename(r.source_file), r.raw, r.reason.split(";")[0].split(":")[0])
        for r in read(spark, cfg, "quarantine").collect()
    )
    expected = Counter(
        (name, line, code) for name, lines in CASES.items() for line, code in lines if code not in (None, "header")
    )
    expected[(REJECTED_FILE[0], REJECTED_FILE[1][0], "missing_columns")] += 1
    expected[("latin1.csv", None, "invalid_utf8")] += 1
    expected[("long_line.csv", None, "line_too_long")] += 1
    expected[("link.csv", None, "unsafe_file")] += 1  # a symlink out of the folder: rejected, content not kept
    # raw of undecodable and overlong lines is whatever the engine kept; compare the rest exactly
    actual_loose = Counter(
        (f, raw if c not in ("invalid_utf8", "line_too_long") else None, c)
        for (f, raw, c), n in quarantine.items()
        for _ in range(n)
    )
    assert actual_loose == expected
    assert ("link.csv", None, "unsafe_file") in quarantine

    # Everything the engine created is for its owner only.
    for root in (Path(cfg.paths.lake), Path(cfg.paths.checkpoints)):
        assert [str(p) for p in [root, *root.rglob("*")] if p.stat().st_mode & 0o077] == []
