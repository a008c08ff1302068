"""Session neighbourhoods: past sessions from the lake's events, and the scores of a live
session against a plain-Python reading of the documented V-SKNN rule."""

import math
import random
from datetime import datetime, timedelta
from fractions import Fraction

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.sql.types import IntegerType, StringType, StructField, StructType, TimestampType

from lib.recommend.session_knn import (
    IDF_WEIGHT,
    RULE_STEPS,
    SESSIONS_SCHEMA,
    SessionIndex,
    position_weights,
    session_scores,
    session_sequences,
)

T0 = datetime(2024, 1, 1, 10, 0, 0)
GAP = 30 * 60
EVENTS_SCHEMA = StructType(
    [
        StructField("user_id", IntegerType()),
        StructField("item_id", IntegerType()),
        StructField("event_type", StringType()),
        StructField("event_ts", TimestampType()),
    ]
)


def minutes(m):
    return T0 + timedelta(minutes=m)


def test_sessions_split_by_the_gap_keep_event_order_and_only_the_most_recent(spark):
    events = spark.createDataFrame(
        [
            (1, 10, "view", minutes(0)),
            (1, 11, "click", minutes(30)),  # exactly the gap: same session
            (1, 12, "view", minutes(61)),  # more than the gap: a new session of one event (dropped)
            (2, 20, "view", minutes(5)),
            (2, 20, "view", minutes(6)),  # a repeat stays in the sequence
            (2, 21, "view", minutes(6)),  # same second as the previous event: item order breaks the tie
            (3, 30, "view", minutes(1)),
            (3, 31, "view", minutes(2)),  # the oldest two-event session: beyond the limit of 2
            (4, None, "view", minutes(3)),  # incomplete rows are ignored
            (None, 40, "view", minutes(3)),
        ],
        EVENTS_SCHEMA,
    )
    got = session_sequences(events, GAP, limit=2).orderBy("session_end")
    expected = spark.createDataFrame([(minutes(6), [20, 20, 21]), (minutes(30), [10, 11])], SESSIONS_SCHEMA)
    assert_df_equality(got, expected, ignore_nullable=True)


def test_no_events_give_no_sessions(spark):
    assert session_sequences(spark.createDataFrame([], EVENTS_SCHEMA), GAP, limit=10).count() == 0


def reference_scores(past, current, neighbours, sample, sequence_weight, repeat_weight, num_items):
    """The module docstring's rule in plain Python; ``past`` most recent first."""
    holding = {}
    for number, items in enumerate(past):
        for item in set(items):
            holding.setdefault(item, []).append(number)
    weight = {item: (position / len(current)) ** 2 for position, item in enumerate(current, 1)}
    relevant = sorted({s for item in current for s in holding.get(item, [])})[:sample]
    exact = {item: Fraction(position, len(current)) ** 2 for position, item in enumerate(current, 1)}
    similar = []
    for s in relevant:
        shared = set(current) & set(past[s])
        # Ordered by the exact similarity: equal ones are ties, which go to the more recent session.
        similar.append((sum(exact[i] for i in shared), s, sum(weight[i] for i in shared) / len(weight)))
    similar = sorted(similar, key=lambda p: (-p[0], p[1]))[:neighbours]
    knn = {}
    for _, s, similarity in similar:
        step = next(n for n, item in enumerate(reversed(current), 1) if item in past[s])
        for item in set(past[s]):
            idf = math.log(len(past) / len(holding[item]))
            knn[item] = knn.get(item, 0.0) + similarity * (1 + IDF_WEIGHT * idf) / step
    rules = {}
    for items in past:
        for i, source in enumerate(items):
            for j in range(i + 1, min(len(items), i + RULE_STEPS + 1)):
                if source == current[-1]:
                    rules[items[j]] = rules.get(items[j], 0.0) + 1.0 / (j - i) ** 2

    def scaled(scores):
        top = max(scores.values(), default=0.0)
        return {i: v / top for i, v in scores.items()} if top > 0 else {}

    total = np.zeros(num_items)
    for item, value in scaled(knn).items():
        total[item] += value
    for item, value in scaled(rules).items():
        total[item] += sequence_weight * value
    for item, value in weight.items():
        total[item] += repeat_weight * value
    return total


def scores_of(index, sessions, neighbours, sample, sequence_weight=0.5, repeat_weight=0.3):
    """``session_scores`` of ``sessions`` (lists of item positions) scored together, one row each."""
    rows = np.repeat(np.arange(len(sessions)), [len(s) for s in sessions])
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions]) if sessions else np.empty(0, np.int64)
    return session_scores(index, rows, items, len(sessions), neighbours, sample, sequence_weight, repeat_weight)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_random_sessions_score_as_the_documented_rule(seed):
    rng = random.Random(seed)
    num_items = 30
    # Few items and many sessions: shared items, repeats and ties in similarity are common.
    past = [[rng.randrange(num_items) for _ in range(rng.randint(2, 8))] for _ in range(60)]
    index = SessionIndex.build([np.array(p) for p in past], num_items, rules_per_item=num_items)
    for _ in range(20):
        current = [rng.randrange(num_items) for _ in range(rng.randint(1, 6))]
        neighbours, sample = rng.choice([(3, 10), (50, 40), (500, 5000)])
        got = scores_of(index, [current], neighbours, sample)[0]
        expected = reference_scores(past, current, neighbours, sample, 0.5, 0.3, num_items)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), current


@pytest.mark.parametrize("seed", [6, 7])
def test_sessions_scored_together_score_exactly_as_each_alone(seed):
    """Live re-ranking scores a chunk of users at once: no row may leak into another, and each
    row's sums add the same terms in the same order (ties in the ranking depend on it)."""
    rng = np.random.default_rng(seed)
    num_items = 40
    past = [rng.integers(0, num_items, rng.integers(2, 12)) for _ in range(300)]
    index = SessionIndex.build(past, num_items, rules_per_item=num_items)
    # Empty sessions among them, and repeats within a session.
    sessions = [rng.integers(0, num_items, rng.integers(0, 15)).tolist() for _ in range(60)]
    for neighbours, sample in [(3, 10), (20, 50), (500, 5000)]:
        together = scores_of(index, sessions, neighbours, sample)
        alone = np.vstack([scores_of(index, [s], neighbours, sample) for s in sessions])
        assert np.array_equal(together, alone)
        for row, current in enumerate(sessions):
            if current:
                expected = reference_scores(
                    [p.tolist() for p in past], current, neighbours, sample, 0.5, 0.3, num_items
                )
                assert together[row] == pytest.approx(expected, rel=1e-9, abs=1e-12)
            else:
                assert not together[row].any()


def test_position_weights_take_each_items_last_occurrence():
    pairs = position_weights(np.array([0, 0, 0, 0, 2]), np.array([5, 3, 5, 1, 4]), num_rows=3, num_items=6)
    assert pairs.rows.tolist() == [0, 0, 0, 2]
    assert pairs.items.tolist() == [1, 3, 5, 4]
    assert pairs.positions.tolist() == [4, 2, 3, 1]
    assert pairs.weights.tolist() == [1.0, (2 / 4) ** 2, (3 / 4) ** 2, 1.0]
    assert pairs.steps.tolist() == [1, 3, 2, 1]
    assert pairs.latest.tolist() == [1, -1, 4]  # row 1 has no event


def test_rules_keep_the_strongest_per_item_and_unknown_sessions_score_nothing():
    past = [np.array([0, 1, 2]), np.array([0, 1]), np.array([0, 3])]
    index = SessionIndex.build(past, 5, rules_per_item=1)
    # After item 0: item 1 twice at distance 1 (weight 2) beats items 2 (1/4) and 3 (1).
    rules = index.rule_scores(position_weights(np.array([0]), np.array([0]), num_rows=1, num_items=5))
    assert rules.tolist() == [[0.0, 2.0, 0.0, 0.0, 0.0]]
    # Item 4 was never seen: no neighbour, no rule; only its own repeat weight.
    assert scores_of(index, [[4]], 10, 10).tolist() == [[0.0, 0.0, 0.0, 0.0, 0.3]]
    empty = SessionIndex.build([], 5, rules_per_item=1)
    assert not scores_of(empty, [[0, 1]], 10, 10, repeat_weight=0.0).any()
    assert not scores_of(index, [[]], 10, 10).any()
    assert scores_of(index, [], 10, 10).shape == (0, 5)
