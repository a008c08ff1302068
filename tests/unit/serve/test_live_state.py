"""The live fold's state in the online store: one transaction a batch, a replayed batch changes
nothing, the watermark closes other users' sessions, the outboxes hold a batch until folded."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa

from lib.features.live_fold import empty_recent, empty_sessions, fold_events
from lib.serve.live_state import BatchChanges, LiveState, session_documents
from tests.unit.features.test_live_fold import DELAY, GAP, T0, events_frame, micros


def fold_batch(state: LiveState, batch_id: int, rows, file="f.csv") -> bool:
    events = events_frame(rows, file)
    sessions, recent, max_event = state.read_open(events.user_id.unique())
    folded = fold_events(sessions, recent, events, GAP, max_event, DELAY)
    latest = folded.latest_per_user()
    docs = session_documents(latest, [0] * len(latest), [None] * len(latest), micros(T0))
    closed = pa.table({"batch": [batch_id]}) if batch_id == 0 else None
    changes = BatchChanges(session_docs=docs, closed_sessions=closed, seen=[(r[0], r[1]) for r in rows])
    return state.apply(batch_id, folded, changes, GAP)


def test_a_replayed_batch_changes_nothing(tmp_path):
    state = LiveState(tmp_path / "s.sqlite")
    assert fold_batch(state, 0, [(1, 5, "view", T0), (1, 6, "click", T0 + timedelta(minutes=5))])
    assert not fold_batch(state, 0, [(1, 5, "view", T0), (1, 6, "click", T0 + timedelta(minutes=5))])
    sessions, recent, max_event = state.read_open([1])
    assert sessions.num_events.tolist() == [2] and len(recent) == 2
    assert max_event == micros(T0 + timedelta(minutes=5))
    assert state.store.session(1)["num_events"] == 2
    assert state.last_applied_batch() == 0
    assert sorted(map(tuple, state.seen_items([1]).values.tolist())) == [(1, 5), (1, 6)]


def test_the_watermark_closes_the_sessions_of_users_without_events(tmp_path):
    state = LiveState(tmp_path / "s.sqlite")
    fold_batch(state, 0, [(1, 5, "view", T0), (2, 5, "view", T0)])
    assert state.closing(micros(T0 + timedelta(minutes=31)), GAP, besides=[2]).user_id.tolist() == [1]
    fold_batch(state, 1, [(2, 7, "view", T0 + timedelta(hours=1))])  # watermark 0:50: user 1's session closes
    assert state.read_open([1])[0].empty
    assert state.store.session(1)["is_open"] is False
    assert state.store.session(2)["is_open"] is True


def test_outboxes_keep_a_batch_until_forgotten_and_another_stream_resets_the_state(tmp_path):
    state = LiveState(tmp_path / "s.sqlite")
    state.bind("stream-a")
    fold_batch(state, 0, [(1, 5, "view", T0)])
    assert state.outbox("closed_sessions", -1, 0).column("batch").to_pylist() == [0]
    assert state.outbox("closed_sessions", 0, 5) is None
    state.forget_through(0)
    assert state.outbox("closed_sessions", -1, 0) is None
    state.bind("stream-a")
    assert not state.read_open([1])[0].empty
    state.bind("stream-b")
    assert state.read_open([1])[0].empty and state.store.session(1) is None


def test_session_documents_carry_the_contract_columns_as_iso_text():
    folded = fold_events(
        empty_sessions(),
        empty_recent(),
        events_frame([(3, 1, "view", T0), (3, 2, "add_to_cart", T0 + timedelta(seconds=90))]),
        GAP,
        None,
        DELAY,
    )
    [(user, doc)] = session_documents(folded.latest_per_user(), [2], [7.5], micros(datetime(2024, 5, 1)))
    assert user == 3
    assert '"session_start":"2024-01-01T00:00:00.000000Z"' in doc and '"avg_time_gap_s":90.0' in doc
    assert '"past_purchases":2' in doc and '"is_open":true' in doc and '"updated_at":"2024-05-01T' in doc
