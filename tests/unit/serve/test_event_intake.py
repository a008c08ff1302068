"""Events sent over HTTP: the CSV line's rules and reason codes, a request refused whole, and
files landed atomically, one per window of requests."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone

import pytest

from lib.serve.event_intake import MAX_EVENTS_PER_REQUEST, EventRejected, FileLander, validated_events


@pytest.mark.parametrize(
    "event, code",
    [
        ({"item_id": 7, "event_type": "view"}, "missing_user_id"),
        ({"user_id": "seven", "item_id": 7, "event_type": "view"}, "bad_user_id"),
        ({"user_id": 0, "item_id": 7, "event_type": "view"}, "non_positive_user_id"),
        ({"user_id": 2**31, "item_id": 7, "event_type": "view"}, "bad_user_id"),
        ({"user_id": 1, "event_type": "view"}, "missing_item_id"),
        ({"user_id": 1, "item_id": 7.5, "event_type": "view"}, "bad_item_id"),
        ({"user_id": 1, "item_id": True, "event_type": "view"}, "bad_item_id"),
        ({"user_id": 1, "item_id": -3, "event_type": "view"}, "non_positive_item_id"),
        ({"user_id": 1, "item_id": 7}, "missing_event_type"),
        ({"user_id": 1, "item_id": 7, "event_type": "purchase"}, "unknown_event_type"),
        ({"user_id": 1, "item_id": 7, "event_type": "view", "timestamp": "yesterday"}, "bad_timestamp"),
        ({"user_id": 1, "item_id": 7, "event_type": "view", "timestamp": "2024-02-30 10:00:00"}, "bad_timestamp"),
        ({"user_id": 1, "item_id": 7, "event_type": "view", "timestamp": ""}, "missing_timestamp"),
        ({"user_id": 1, "item_id": 7, "event_type": "view", "timestamp": 1700000000}, "bad_timestamp"),
        ("not an object", "bad_event"),
    ],
)
def test_each_rule_gives_the_quarantines_reason_code(event, code):
    with pytest.raises(EventRejected) as rejected:
        validated_events([event])
    assert rejected.value.code == code and rejected.value.index == 0


def test_valid_events_are_normalised_as_the_csv_parse_would_read_them():
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    events = validated_events(
        [
            {"item_id": 7, "event_type": " Click ", "timestamp": "2024-05-01 10:00:00"},
            {"item_id": "8", "event_type": "add_to_cart", "timestamp": "2024-05-01T12:00:00+02:00"},
            {"item_id": 9, "event_type": "view", "user_id": 99},  # the path's user wins
            {"item_id": 9, "event_type": "view"},
        ],
        user_id=5,
    )
    assert events[:3] == [
        (5, 7, "click", "2024-05-01 10:00:00"),
        (5, 8, "add_to_cart", "2024-05-01 10:00:00.000000"),
        (5, 9, "view", events[2][3]),
    ]
    stamped = datetime.strptime(events[3][3], "%Y-%m-%d %H:%M:%S.%f")
    assert before <= stamped <= datetime.now(timezone.utc).replace(tzinfo=None)


def test_one_bad_event_refuses_the_whole_request_and_the_size_is_capped():
    good = {"user_id": 1, "item_id": 7, "event_type": "view"}
    with pytest.raises(EventRejected) as rejected:
        validated_events([good, good, {**good, "item_id": 0}, good])
    assert rejected.value.index == 2 and str(rejected.value).startswith("event 2: non_positive_item_id")
    with pytest.raises(EventRejected, match="too_many_events"):
        validated_events([good] * (MAX_EVENTS_PER_REQUEST + 1))
    assert validated_events([]) == []


def test_requests_within_a_window_land_as_one_file_and_no_partial_file_is_ever_visible(tmp_path):
    lander = FileLander(tmp_path / "incoming", window_s=0.05)
    requests, per_request, windows = 8, 2_500, 6
    seen_partial: list[str] = []
    stop = threading.Event()

    def watch():
        # What the stream's file source would list: every non-hidden file must be whole.
        while not stop.is_set():
            for path in (tmp_path / "incoming").glob("[!.]*"):
                text = path.read_text()
                if not text.endswith("\n") or text.count("\n") != requests * per_request + 1:
                    seen_partial.append(path.name)

    async def one_window(window: int) -> set[str]:
        def events(r):
            return [(r + 1, i + 1, "view", f"2024-05-01 10:{window:02d}:00") for i in range(per_request)]

        return set(await asyncio.gather(*(lander.submit(events(r)) for r in range(requests))))

    async def all_windows():
        return [await one_window(w) for w in range(windows)]

    (tmp_path / "incoming").mkdir()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        landed = asyncio.run(all_windows())
    finally:
        stop.set()
        watcher.join()
    assert all(len(paths) == 1 for paths in landed)  # every request of a window: the same file
    files = sorted((tmp_path / "incoming").iterdir())
    assert len(files) == windows and not [f for f in files if f.name.startswith(".")]
    lines = files[0].read_text().splitlines()
    assert lines[0] == "user_id,item_id,event_type,timestamp" and len(lines) == requests * per_request + 1
    assert not seen_partial
