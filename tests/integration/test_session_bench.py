"""bench/sessions.py end to end on a tiny dataset whose next items follow a fixed order: the
training clicks go through the stream and the model, the test sessions are replayed through
the stream, and every next item is read back from the HTTP API's live recommendations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 60
# Past sessions walk a cycle of item ids (1000, 1001, ..., 1059, 1000, ...) for four clicks.
TRAIN = [[1000 + (start + k) % ITEMS for k in range(4)] for start in range(0, 2 * ITEMS)]
TEST = [[1000 + (start + k) % ITEMS for k in range(length)] for start, length in ((2, 3), (25, 2), (41, 4), (58, 3))]


def write_split(path: Path, sessions: list[list[int]], first_session: int, start_time: float) -> None:
    lines = ["SessionId\tItemId\tTime"]
    for number, items in enumerate(sessions):
        for position, item in enumerate(items):
            lines.append(f"{first_session + number}\t{item}\t{start_time + number * 3600 + position * 45.5}")
    path.write_text("\n".join(lines) + "\n")


def test_next_items_of_a_fixed_order_are_served_live_and_scored(tmp_path):
    write_split(tmp_path / "tiny_train_full.txt", TRAIN, 1, 1_396_400_000.0)
    write_split(tmp_path / "tiny_test.txt", TEST, 9001, 1_396_400_000.0 + len(TRAIN) * 3600)
    root = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "bench/sessions.py", "--data", str(tmp_path), "--prefix", "tiny", "--root", str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((root / "results.json").read_text())
    assert report["predictions"] == sum(len(s) - 1 for s in TEST)
    streamrec = report["results"]["streamrec (live, through the API)"]
    # Every next item followed the current one in many past sessions: always second, behind the
    # item just clicked (the bench allows repeats, and that item is in every neighbour session).
    assert streamrec["HR@10"] == 1.0
    assert streamrec["MRR@10"] == pytest.approx(0.5)
    # Every item is equally popular: popularity cannot know the order.
    assert report["results"]["global popularity"]["HR@10"] < 0.5
    assert "| streamrec (live, through the API) | 1.000 |" in result.stdout
