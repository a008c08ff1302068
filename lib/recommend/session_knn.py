"""Session neighbourhoods: next-item scores from sessions seen before (for live re-ranking).

The model keeps the most recent ``recommend.session_index_size`` past sessions of two or more
events as item sequences (``session_sequences``). A live session is scored against them the way
V-SKNN does (Ludewig & Jannach, "Evaluation of session-based recommendation algorithms", 2018):

- each item of the current session weighs ``(position / length)^2`` (its last occurrence;
  the latest event weighs 1);
- candidate neighbours are the ``recommend.session_sample`` most recent past sessions sharing an
  item with it; a neighbour's similarity is the summed weight of the shared items over the
  number of distinct current items; the ``recommend.session_neighbours`` most similar are kept;
- every item of a neighbour gains ``similarity * (1 + 5 * idf(item)) / step``, ``step`` being
  how far back in the current session the latest item the two share is (1 = the latest event).

Two more signals are added, each scaled to the neighbourhood's best score: sequential rules
(items that followed the session's latest item within 20 steps in past sessions, weighted
``1 / distance^2``; ``recommend.sequence_weight``) and the session's own items by their
position weight (``recommend.repeat_weight``: a third of next clicks in e-commerce sessions
revisit an item, whether they may be recommended is ``recommend.live_repeats``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, IntegerType, StructField, StructType, TimestampType

from lib.core.config import micros
from lib.core.schemas import EVENT_TS, ITEM_ID, SESSION_END, USER_ID

ITEMS = "items"
SESSIONS_SCHEMA = StructType([StructField(SESSION_END, TimestampType()), StructField(ITEMS, ArrayType(IntegerType()))])

# V-SKNN's settings for e-commerce clicks (its authors' tuned values for YooChoose).
IDF_WEIGHT = 5.0
# Sequential rules: a later item within this many steps counts, weighted 1 / distance^2.
RULE_STEPS = 20


def session_sequences(events: DataFrame, gap_seconds: float, limit: int) -> DataFrame:
    """``SESSIONS_SCHEMA`` rows: the ``limit`` most recent sessions of two or more events, each
    its items in event order (sessions split as the stream does: a gap above ``gap_seconds``)."""
    ordered = Window.partitionBy(USER_ID).orderBy(EVENT_TS, ITEM_ID)
    previous = F.lag(F.unix_micros(EVENT_TS)).over(ordered)
    # The contract's rule: more than the gap after the previous event starts a new session.
    starts = (previous.isNull() | (F.unix_micros(EVENT_TS) - previous > micros(gap_seconds))).cast("int")
    events = (
        events.where(F.col(USER_ID).isNotNull() & F.col(ITEM_ID).isNotNull() & F.col(EVENT_TS).isNotNull())
        .select(USER_ID, ITEM_ID, EVENT_TS)
        .withColumn("_session", F.sum(starts).over(ordered.rowsBetween(Window.unboundedPreceding, 0)))
    )
    sequences = (
        events.groupBy(USER_ID, "_session")
        .agg(
            F.array_sort(F.collect_list(F.struct(EVENT_TS, ITEM_ID))).alias("_events"),
            F.max(EVENT_TS).alias(SESSION_END),
        )
        .where(F.size("_events") >= 2)
        .select(SESSION_END, F.transform("_events", lambda e: e[ITEM_ID]).alias(ITEMS), USER_ID)
    )
    return (
        sequences.orderBy(F.col(SESSION_END).desc(), F.col(USER_ID)).limit(limit).select(*SESSIONS_SCHEMA.fieldNames())
    )


def _csr(rows: np.ndarray, values: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and values of a row-major sparse layout (``rows`` need not be sorted)."""
    order = np.argsort(rows, kind="stable")
    offsets = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=offsets[1:])
    return offsets, values[order]


@dataclass(frozen=True)
class SessionIndex:
    """Past sessions over item positions ``0..num_items-1``; session 0 is the most recent."""

    num_items: int
    session_offsets: np.ndarray  # session -> its distinct items
    session_items: np.ndarray
    item_offsets: np.ndarray  # item -> the sessions holding it, most recent first
    item_sessions: np.ndarray
    idf_boost: np.ndarray  # per item: 1 + IDF_WEIGHT * log(sessions / sessions holding it)
    rule_offsets: np.ndarray  # item -> items that followed it, with their rule weight
    rule_items: np.ndarray
    rule_weights: np.ndarray

    @classmethod
    def empty(cls, num_items: int) -> "SessionIndex":
        offsets = np.zeros(num_items + 1, dtype=np.int64)
        nothing = np.empty(0, dtype=np.int64)
        return cls(
            num_items,
            np.zeros(1, dtype=np.int64),
            nothing,
            offsets,
            nothing,
            np.ones(num_items),
            offsets,
            nothing,
            np.empty(0),
        )

    @classmethod
    def build(cls, sequences: list[np.ndarray], num_items: int, rules_per_item: int) -> "SessionIndex":
        """``sequences``: item positions of each past session in event order, most recent first."""
        if not sequences:
            return cls.empty(num_items)
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        flat = np.concatenate(sequences).astype(np.int64)
        session_of = np.repeat(np.arange(len(sequences)), lengths)

        pairs = np.unique(session_of * num_items + flat)  # distinct (session, item), session-major
        pair_session, pair_item = pairs // num_items, pairs % num_items
        session_offsets, session_items = _csr(pair_session, pair_item, len(sequences))
        # Sorting by item keeps each item's sessions in session order: most recent first.
        item_offsets, item_sessions = _csr(pair_item, pair_session, num_items)
        holding = np.diff(item_offsets)
        idf = np.log(len(sequences) / np.maximum(holding, 1))
        idf_boost = 1.0 + IDF_WEIGHT * np.where(holding > 0, idf, 0.0)

        sources, targets, weights = [], [], []
        for distance in range(1, RULE_STEPS + 1):
            same = session_of[distance:] == session_of[:-distance]
            sources.append(flat[:-distance][same])
            targets.append(flat[distance:][same])
            weights.append(np.full(int(same.sum()), 1.0 / distance**2))
        rule_keys, inverse = np.unique(
            np.concatenate(sources) * num_items + np.concatenate(targets), return_inverse=True
        )
        rule_weight = np.bincount(inverse, np.concatenate(weights))
        rule_source, rule_target = rule_keys // num_items, rule_keys % num_items
        # The strongest rules_per_item of each source item, strongest first.
        order = np.lexsort((rule_target, -rule_weight, rule_source))
        rule_source, rule_target, rule_weight = rule_source[order], rule_target[order], rule_weight[order]
        slot = np.arange(len(rule_source)) - np.searchsorted(rule_source, rule_source)
        kept = slot < rules_per_item
        rule_offsets, rule_items = _csr(rule_source[kept], rule_target[kept], num_items)
        return cls(
            num_items,
            session_offsets,
            session_items,
            item_offsets,
            item_sessions,
            idf_boost,
            rule_offsets,
            rule_items,
            rule_weight[kept],
        )

    @property
    def num_sessions(self) -> int:
        return len(self.session_offsets) - 1

    def _gather(self, offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``rows``, value) for every value of the given rows."""
        starts = offsets[rows]
        lengths = offsets[rows + 1] - starts
        owner = np.repeat(np.arange(len(rows)), lengths)
        shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        return owner, values[np.arange(len(owner)) + shift]

    def neighbourhood_scores(self, pairs: SessionItems, neighbours: int, sample: int) -> np.ndarray:
        """V-SKNN scores of every item for each of ``pairs.num_rows`` sessions (dense, rows x
        ``num_items``), from their distinct items with their ``position_weights``. Each row is
        scored on its own (``_neighbourhood``)."""
        scores = np.zeros((pairs.num_rows, self.num_items))
        if len(pairs.rows) and self.num_sessions:
            _neighbourhood(
                np.searchsorted(pairs.rows, np.arange(pairs.num_rows + 1)),
                pairs.items,
                pairs.weights,
                pairs.positions,
                pairs.steps,
                self.item_offsets,
                self.item_sessions,
                self.session_offsets,
                self.session_items,
                neighbours,
                sample,
                scores,
            )
        return scores * self.idf_boost

    def rule_scores(self, pairs: SessionItems) -> np.ndarray:
        """Sequential-rule weights of the items that followed each session's latest item (rows x
        ``num_items``)."""
        scores = np.zeros((pairs.num_rows, self.num_items))
        rows = np.flatnonzero(pairs.latest >= 0)
        owner, items = self._gather(self.rule_offsets, self.rule_items, pairs.latest[rows])
        _, weights = self._gather(self.rule_offsets, self.rule_weights, pairs.latest[rows])
        scores[rows[owner], items] = weights
        return scores


@njit(cache=True, nogil=True)
def _neighbourhood(
    pair_offsets,
    items,
    weights,
    positions,
    steps,
    item_offsets,
    item_sessions,
    session_offsets,
    session_items,
    neighbours,
    sample,
    scores,
):
    """Adds each row's neighbourhood scores to ``scores`` (rows x items), before the idf boost.

    A row's distinct items are ``pair_offsets[row]:pair_offsets[row + 1]``. Their lists of past
    sessions (most recent first) are merged, most recent first, up to ``sample`` sessions: each
    with the summed weight of the items it shares, their overlap (the summed squared positions,
    exact: within a row the similarity orders as it does) and the nearest step back. Of those the
    ``neighbours`` most similar (ties: the more recent; a counting sort on the overlap) add
    ``similarity / step`` to each of their items. Compiled, as one pass per row: numpy took a
    dozen passes over every row's candidates together (re-ranking 2,000 users: 0.82 s, now 0.30 s)."""
    num_sessions = len(session_offsets) - 1
    width = max(pair_offsets[1:] - pair_offsets[:-1])
    heads, stops = np.empty(width, np.int64), np.empty(width, np.int64)
    found, summed = np.empty(sample, np.int64), np.empty(sample)
    overlap, nearest = np.empty(sample, np.int64), np.empty(sample, np.int64)
    for row in range(len(pair_offsets) - 1):
        begin, end = pair_offsets[row], pair_offsets[row + 1]
        for j in range(end - begin):
            heads[j], stops[j] = item_offsets[items[begin + j]], item_offsets[items[begin + j] + 1]
        count = 0
        while count < sample:
            best = num_sessions  # the most recent session left: the smallest head of the lists
            for j in range(end - begin):
                if heads[j] < stops[j] and item_sessions[heads[j]] < best:
                    best = item_sessions[heads[j]]
            if best == num_sessions:
                break
            total, squares, step = 0.0, 0, np.iinfo(np.int64).max
            for j in range(end - begin):
                if heads[j] < stops[j] and item_sessions[heads[j]] == best:
                    total += weights[begin + j]
                    squares += positions[begin + j] * positions[begin + j]
                    step = min(step, steps[begin + j])
                    heads[j] += 1
            found[count], summed[count], overlap[count], nearest[count] = best, total, squares, step
            count += 1
        order = np.arange(count)
        if count > neighbours:
            most = overlap[:count].max()
            slots = np.zeros(most + 2, np.int64)  # the first place of each overlap, most first
            for k in range(count):
                slots[most - overlap[k] + 1] += 1
            slots = np.cumsum(slots)
            for k in range(count):
                order[slots[most - overlap[k]]] = k
                slots[most - overlap[k]] += 1
            order = order[:neighbours]
        for k in order:
            contribution = summed[k] / (end - begin) / nearest[k]
            for at in range(session_offsets[found[k]], session_offsets[found[k] + 1]):
                scores[row, session_items[at]] += contribution


@dataclass(frozen=True)
class SessionItems:
    """The distinct items of ``num_rows`` sessions, one row per (session, item), by session then
    item (``position_weights``)."""

    num_rows: int
    rows: np.ndarray
    items: np.ndarray  # item positions
    positions: np.ndarray  # the item's last occurrence's position (1-based)
    weights: np.ndarray  # ``(position / length)^2``
    steps: np.ndarray  # its step back from the session's end (1 = the latest event)
    latest: np.ndarray  # per session: its latest event's item (-1: an empty session)


def position_weights(rows: np.ndarray, session: np.ndarray, num_rows: int, num_items: int) -> SessionItems:
    """The distinct items of sessions given as ``rows`` (ascending: the session of each event)
    and ``session`` (the item position of each event, in event order within a session)."""
    lengths = np.bincount(rows, minlength=num_rows)
    ends = np.cumsum(lengths)
    position = np.arange(len(rows)) - (ends - lengths)[rows] + 1  # 1-based, within the session
    # The first of each (session, item) key from the end is its last occurrence.
    keys, from_end = np.unique((rows * num_items + session)[::-1], return_index=True)
    last = len(rows) - 1 - from_end
    pair_rows = keys // num_items
    length = lengths[pair_rows]
    latest = np.full(num_rows, -1, dtype=np.int64)
    latest[lengths > 0] = session[ends[lengths > 0] - 1]
    return SessionItems(
        num_rows,
        pair_rows,
        keys % num_items,
        position[last],
        (position[last] / length) ** 2,
        length - position[last] + 1,
        latest,
    )


def _scaled(scores: np.ndarray) -> np.ndarray:
    """Each row divided by its largest score (a row without a positive one: as it is)."""
    top = scores.max(axis=1, initial=0.0)[:, None]
    return np.divide(scores, top, out=scores.copy(), where=top > 0)


def session_scores(
    index: SessionIndex,
    rows: np.ndarray,
    session: np.ndarray,
    num_rows: int,
    neighbours: int,
    sample: int,
    sequence_weight: float,
    repeat_weight: float,
) -> np.ndarray:
    """The live session signal of every item for each of ``num_rows`` sessions (rows x items;
    sessions as ``position_weights`` takes them): neighbourhood + rules + repeats, each scaled to
    [0, 1] first (zeros where nothing is known)."""
    pairs = position_weights(
        np.asarray(rows, dtype=np.int64), np.asarray(session, dtype=np.int64), num_rows, index.num_items
    )
    scores = _scaled(index.neighbourhood_scores(pairs, neighbours, sample))
    if sequence_weight:
        scores += sequence_weight * _scaled(index.rule_scores(pairs))
    if repeat_weight:
        scores[pairs.rows, pairs.items] += repeat_weight * pairs.weights
    return scores


def sequences_from(frame: pd.DataFrame, item_ids: np.ndarray) -> list[np.ndarray]:
    """Item positions of each session of a ``SESSIONS_SCHEMA`` frame, most recent first;
    ``item_ids`` is sorted and holds every item of the frame."""
    frame = frame.sort_values(SESSION_END, ascending=False, kind="stable")
    return [
        np.searchsorted(item_ids, np.asarray(items, dtype=np.int64))
        for items in frame[ITEMS]
        if items is not None and len(items) >= 2
    ]
