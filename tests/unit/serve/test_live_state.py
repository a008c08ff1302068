"""The live fold's state in the online store: one transaction a batch, a replayed batch changes
nothing, the watermark closes other users' sessions, the outboxes hold a batch until folded."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pyarrow as pa

from lib.core.config import load_config
from lib.features.live_fold import empty_recent, empty_sessions, fold_events
from lib.features.profiles import profile_increments
from lib.serve.live_state import BatchChanges, LiveState, session_documents
from tests.unit.features.test_live_fold import DELAY, GAP, T0, events_frame, micros

WEIGHTS = load_config(None, []).recommend.event_weights


def fold_batch(state: LiveState, batch_id: int, rows, file="f.csv") -> bool:
    events = events_frame(rows, file)
    sessions, recent, max_event = state.read_open(events.user_id.unique())
    folded = fold_events(sessions, recent, events, GAP, max_event, DELAY)
    latest = folded.latest_per_user()
    docs = session_documents(latest, [0] * len(latest), [None] * len(latest), micros(T0))
    closed = pa.table({"batch": [batch_id]}) if batch_id == 0 else None
    totals, engagement = profile_increments(events, events.iloc[:0].assign(session_start=0, session_end=0), WEIGHTS)
    changes = BatchChanges(session_docs=docs, closed_sessions=closed, profile_totals=totals, user_engagement=engagement)
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
    totals, engagement, users, changed = state.profile_totals(-1, 0)
    assert totals.num_events.tolist() == [2] and users.tolist() == changed.tolist() == [1]
    assert totals.first_seen.tolist() == [micros(T0)] and len(engagement) == 2


def test_profile_totals_add_up_batch_by_batch_and_a_pass_takes_the_users_its_batches_changed_last(tmp_path):
    state = LiveState(tmp_path / "s.sqlite")
    fold_batch(state, 0, [(1, 5, "view", T0 + timedelta(minutes=1)), (2, 5, "click", T0)])
    fold_batch(state, 1, [(1, 5, "click", T0), (3, 6, "view", T0)])
    fold_batch(state, 2, [(3, 6, "view", T0 + timedelta(minutes=2))])
    totals, engagement, users, changed = state.profile_totals(-1, 1, also=[3, 4])
    # User 3 changed again in batch 2, after the pass's last batch: the next pass takes it.
    assert users.tolist() == [1, 2, 4] and changed.tolist() == [1, 2]
    one = totals[totals.user_id == 1].iloc[0]
    assert (one.num_events, one.num_views, one.num_clicks) == (2, 1, 1)
    assert (one.first_seen, one.last_seen) == (micros(T0), micros(T0 + timedelta(minutes=1)))
    assert engagement[engagement.user_id == 1].weight.tolist() == [WEIGHTS["view"] + WEIGHTS["click"]]
    assert state.profile_totals(1, 2)[2].tolist() == [3]


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


def test_a_store_of_the_older_layout_is_left_to_be_rebuilt_from_the_lake(tmp_path):
    state = LiveState(tmp_path / "s.sqlite")
    fold_batch(state, 0, [(1, 5, "view", T0)])
    with state._db() as db:
        db.execute("CREATE TABLE seen_items (user_id INTEGER, item_id INTEGER)")
    reopened = LiveState(tmp_path / "s.sqlite")
    assert reopened.last_applied_batch() == -1  # behind any checkpoint: the stream rebuilds it
    tables = {row[0] for row in reopened._db().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "seen_items" not in tables and "user_engagement" in tables


def ranking_rows(user: int, session: str, items: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": user,
            "session_id": session,
            "event_ts": [micros(T0) + i for i in range(len(items))],
            "item_id": items,
            "event_type": "view",
        }
    )


def test_the_ranking_context_keeps_each_users_latest_until_ranked(tmp_path):
    state = LiveState(tmp_path / "s.sqlite")
    folded = fold_events(empty_sessions(), empty_recent(), events_frame([]), GAP, None, DELAY)
    first = pd.concat([ranking_rows(1, "1-0", [5, 6]), ranking_rows(2, "2-0", [7])], ignore_index=True)
    state.apply(0, folded, BatchChanges(ranking=first), GAP)
    # User 1's later batch replaces its context; user 2's stays; an empty context changes nothing.
    state.apply(1, folded, BatchChanges(ranking=ranking_rows(1, "1-9", [8, 9, 8])), GAP)
    state.apply(2, folded, BatchChanges(ranking=ranking_rows(3, "3-0", [])), GAP)
    assert not state.apply(2, folded, BatchChanges(ranking=ranking_rows(4, "4-0", [1])), GAP)  # a replay
    work = state.pending_ranking()
    assert work.batch_id == 2
    assert work.rows.values.tolist() == [
        [1, "1-9", micros(T0), 8, "view"],
        [1, "1-9", micros(T0) + 1, 9, "view"],
        [1, "1-9", micros(T0) + 2, 8, "view"],
        [2, "2-0", micros(T0), 7, "view"],
    ]
    # A batch applied while those users are ranked queues its own; ranking through batch 2 leaves them.
    state.apply(3, folded, BatchChanges(ranking=ranking_rows(2, "2-0", [7, 4]), updated_at_micros=77), GAP)
    state.rank_pending(2, [(1, '{"user_id": 1}'), (2, '{"user_id": 2}')])
    work = state.pending_ranking()
    assert (work.batch_id, work.updated_at_micros) == (3, 77)
    assert work.rows[["user_id", "item_id"]].values.tolist() == [[2, 7], [2, 4]]
    state.rank_pending(3, [(2, '{"user_id": 2, "v": 2}')])
    assert state.pending_ranking().rows.empty
    assert state.store.live_recommendations(1) == {"user_id": 1}
    assert state.store.live_recommendations(2) == {"user_id": 2, "v": 2}
