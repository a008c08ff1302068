"""The slow pass mirrors the store's live documents: a MERGE of the changed ones, or a snapshot
that replaces the table once most of them changed; either way the mirror equals the store."""

import json
from datetime import timedelta

from delta.tables import DeltaTable

from lib.serve.live_state import LiveState
from lib.stream.query import ensure_tables
from lib.stream.slow import SlowCadence
from tests.helpers import make_config, read
from tests.unit.features.test_live_fold import T0
from tests.unit.serve.test_live_state import fold_batch


def recommendations(user: int, items: list[int]) -> tuple[int, str]:
    doc = {
        "user_id": user,
        "session_id": f"{user}-0",
        "model_version": "m",
        "generated_at": "2024-01-01T00:00:00Z",
        "items": [{"rank": r, "item_id": i, "score": 1.0 / r} for r, i in enumerate(items, 1)],
    }
    return user, json.dumps(doc)


def finish(state: LiveState, batch_id: int) -> None:
    with state._db() as db:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_batch_id', ?)", (str(batch_id),))


def mirrored(spark, cfg) -> tuple[dict, set]:
    sessions = {r.user_id: r.num_events for r in read(spark, cfg, "live_sessions").collect()}
    recs = {(r.user_id, r.rank, r.item_id) for r in read(spark, cfg, "live_recommendations").collect()}
    return sessions, recs


def last_operation(spark, cfg, table: str) -> str:
    return DeltaTable.forPath(spark, cfg.paths.table(table)).history(1).first().operation


def test_a_few_changed_users_are_merged_and_most_replace_the_mirror(spark, tmp_path):
    cfg = make_config(tmp_path, "recommend.top_k=3")
    ensure_tables(spark, cfg)
    state = LiveState(cfg.paths.online_store)
    slow = SlowCadence(spark, cfg, state, lambda: "slow-test")

    # (fold_batch gives batch 0 a placeholder outbox row.)
    fold_batch(state, 1, [(user, 1, "view", T0) for user in range(1, 11)])
    state.rank_pending(1, [recommendations(user, [5, 6, 7]) for user in range(1, 11)])
    finish(state, 1)
    assert slow.fold() == 1
    assert last_operation(spark, cfg, "live_sessions") == last_operation(spark, cfg, "live_recommendations") == "WRITE"
    assert mirrored(spark, cfg) == (
        {u: 1 for u in range(1, 11)},
        {(u, r, i) for u in range(1, 11) for r, i in ((1, 5), (2, 6), (3, 7))},
    )

    # One user of ten: a MERGE, which also deletes the rank slots a shorter list left.
    fold_batch(state, 2, [(3, 2, "click", T0 + timedelta(minutes=1))])
    state.rank_pending(2, [recommendations(3, [9])])
    finish(state, 2)
    assert slow.fold() == 2
    assert last_operation(spark, cfg, "live_sessions") == last_operation(spark, cfg, "live_recommendations") == "MERGE"
    sessions, recs = mirrored(spark, cfg)
    assert sessions == {**{u: 1 for u in range(1, 11)}, 3: 2}
    assert {(r, i) for u, r, i in recs if u == 3} == {(1, 9)}
    assert len(recs) == 9 * 3 + 1


def test_recommendations_ranked_beside_an_unfinished_batch_are_mirrored_once(spark, tmp_path):
    """The live ranking labels its documents with the last batch applied, which may not have
    finished its appends yet: the mirror takes them and stands at that batch, and the next pass
    does not write them again."""
    cfg = make_config(tmp_path, "recommend.top_k=3")
    ensure_tables(spark, cfg)
    state = LiveState(cfg.paths.online_store)
    slow = SlowCadence(spark, cfg, state, lambda: "slow-ahead")
    fold_batch(state, 1, [(user, 1, "view", T0) for user in range(1, 5)])
    finish(state, 1)
    fold_batch(state, 2, [(1, 2, "click", T0 + timedelta(minutes=1))])  # applied, appends not done
    state.rank_pending(2, [recommendations(user, [5, 6, 7]) for user in range(1, 5)])
    assert slow.fold() == 1
    recs_table = cfg.paths.table("live_recommendations")
    versions = DeltaTable.forPath(spark, recs_table).history().count()
    assert mirrored(spark, cfg)[1] == {(u, r, i) for u in range(1, 5) for r, i in ((1, 5), (2, 6), (3, 7))}
    finish(state, 2)
    assert slow.fold() == 2
    assert DeltaTable.forPath(spark, recs_table).history().count() == versions  # nothing new to mirror
    assert mirrored(spark, cfg)[0][1] == 2  # while live_sessions took batch 2
