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
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, IntegerType, StructField, StructType, TimestampType

from lib.core.schemas import EVENT_TS, ITEM_ID, SESSION_END, USER_ID
from lib.features.sessions import starts_new_session

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
    starts = starts_new_session(previous, F.unix_micros(EVENT_TS), gap_seconds).cast("int")
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
        starts, ends = offsets[rows], offsets[rows + 1]
        lengths = ends - starts
        owner = np.repeat(np.arange(len(rows)), lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return owner, values[np.repeat(starts, lengths) + within]

    def neighbourhood_scores(
        self, items: np.ndarray, weights: np.ndarray, steps: np.ndarray, neighbours: int, sample: int
    ) -> np.ndarray:
        """V-SKNN scores of every item (dense, ``num_items``) for a session's distinct items with
        their ``position_weights``."""
        scores = np.zeros(self.num_items)
        if not len(items) or not self.num_sessions:
            return scores
        owner, sessions = self._gather(self.item_offsets, self.item_sessions, items)
        if not len(sessions):
            return scores
        candidates = np.unique(sessions)[:sample]  # session numbers grow with age
        chosen = np.isin(sessions, candidates)
        owner, sessions = owner[chosen], sessions[chosen]
        similarity = np.bincount(sessions, weights[owner], minlength=self.num_sessions) / len(items)
        step = np.full(self.num_sessions, np.iinfo(np.int64).max)
        np.minimum.at(step, sessions, steps[owner])
        candidates = np.unique(sessions)
        if len(candidates) > neighbours:
            best = np.lexsort((candidates, -similarity[candidates]))[:neighbours]
            candidates = candidates[best]
        contribution = similarity[candidates] / step[candidates]
        owner, neighbour_items = self._gather(self.session_offsets, self.session_items, candidates)
        scores += np.bincount(neighbour_items, contribution[owner], minlength=self.num_items)
        return scores * self.idf_boost

    def rule_scores(self, session: np.ndarray) -> np.ndarray:
        """Sequential-rule weights of the items that followed the session's latest item."""
        scores = np.zeros(self.num_items)
        if len(session):
            last = int(session[-1])
            start, end = self.rule_offsets[last], self.rule_offsets[last + 1]
            scores[self.rule_items[start:end]] = self.rule_weights[start:end]
        return scores


def position_weights(session: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct items of a session (item positions, ascending), the weight of each (its last
    occurrence's ``(position / length)^2``) and its step back from the end (1 = latest)."""
    length = len(session)
    items, first_from_end = np.unique(session[::-1], return_index=True)
    last_position = length - first_from_end  # 1-based
    return items, (last_position / length) ** 2, first_from_end + 1


def _scaled(scores: np.ndarray) -> np.ndarray:
    top = scores.max(initial=0.0)
    return scores / top if top > 0 else scores


def session_scores(
    index: SessionIndex, session: np.ndarray, neighbours: int, sample: int, sequence_weight: float, repeat_weight: float
) -> np.ndarray:
    """The live session signal of every item: neighbourhood + rules + repeats, each scaled to
    [0, 1] first (zeros where nothing is known)."""
    items, weights, steps = position_weights(session)
    scores = _scaled(index.neighbourhood_scores(items, weights, steps, neighbours, sample))
    if sequence_weight:
        scores += sequence_weight * _scaled(index.rule_scores(session))
    if repeat_weight:
        scores[items] += repeat_weight * weights
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
