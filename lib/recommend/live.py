"""Live re-ranking: recommendations from the current session blended with the model.

For a user with new events, the session signal comes from the latest events of their live
session (up to 20, in time order): the session neighbourhood of ``lib.recommend.session_knn`` (past
sessions that shared its items, sequential rules from its latest item, its own items) when the
model's past sessions know any of its items; otherwise each event votes for its item's
neighbours (``item_neighbours`` of the model), with the weight of its event type, halved every
``recommend.session_half_life`` of age (measured from the session's latest event). The session
signal and the user's model scores are each scaled to [0, 1] per user and blended:
``session_weight * session + (1 - session_weight) * model``. Users the model does not know get
the session signal alone; popular items fill any remaining places. Excluded items (purchased,
and seen when ``exclude_seen``) are never recommended. Ties rank the smaller ``item_id`` first.

The scoring runs on the driver (``DriverRanker``, ``rank_users``), in numpy, the session
neighbourhood in a numba-compiled loop (``lib.recommend.session_knn``): the model's
neighbour lists, past sessions, popularity order and user scores are loaded once per model
version, so a micro-batch runs no Spark job to re-rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lib.core.config import RecommendConfig
from lib.core.schemas import (
    EVENT_TS,
    EVENT_TYPE,
    ITEM_ID,
    LIVE_RECOMMENDATIONS_SCHEMA,
    RANK,
    SCORE,
    SESSION_END,
    SESSION_ID,
    USER_ID,
)
from lib.recommend.models import NEIGHBOUR_ID, WEIGHT
from lib.recommend.session_knn import ITEMS, SESSIONS_SCHEMA, SessionIndex, sequences_from, session_scores

_EVENT_ITEMS, _VOTES, _MODEL_ITEMS, _MODEL_SCORES, _EXCLUDED = (
    "_event_items",
    "_votes",
    "_model_items",
    "_model_scores",
    "_excluded",
)
_RANKED_SCHEMA = StructType([LIVE_RECOMMENDATIONS_SCHEMA[c] for c in (USER_ID, SESSION_ID, RANK, ITEM_ID, SCORE)])
_PANDAS_TYPES = {USER_ID: np.int32, SESSION_ID: object, RANK: np.int32, ITEM_ID: np.int32, SCORE: np.float64}
# Users x items cells scored at once in a Python worker (8 MB per float64 matrix).
_CELLS_PER_CHUNK = 1 << 20


def _lists_by_key(keys: pd.Series, values: pd.Series) -> dict[int, np.ndarray]:
    """Each key's values as an array, in their order (one stable sort, no Python per row)."""
    order = np.argsort(keys.to_numpy(), kind="stable")
    sorted_keys, sorted_values = keys.to_numpy()[order], values.to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(order) else np.empty(0, int)
    return dict(zip(sorted_keys[starts].tolist(), np.split(sorted_values, starts[1:])))


@dataclass(frozen=True)
class ModelArrays:
    """A model's item side as arrays; items are addressed by their position in ``item_ids``."""

    item_ids: np.ndarray  # every item the model knows, ascending
    neighbour_pos: np.ndarray  # (items, max neighbours); len(item_ids) pads short rows
    neighbour_weight: np.ndarray  # same shape; 0 where padded
    popular_pos: np.ndarray  # popularity order: score descending, then item_id ascending
    popular_score: np.ndarray
    sessions: SessionIndex  # past sessions, for the session neighbourhood signal

    @classmethod
    def build(
        cls,
        neighbours: pd.DataFrame,
        popularity: pd.DataFrame,
        scored_items: np.ndarray,
        sessions: pd.DataFrame | None = None,
        rules_per_item: int = 100,
    ) -> "ModelArrays":
        neighbours = neighbours.dropna()
        popularity = popularity.dropna()
        sessions = sessions if sessions is not None else pd.DataFrame({SESSION_END: [], ITEMS: []})
        session_items = [np.asarray(items, dtype=np.int64) for items in sessions[ITEMS] if items is not None]
        item_ids = np.unique(
            np.concatenate(
                [neighbours[ITEM_ID], neighbours[NEIGHBOUR_ID], popularity[ITEM_ID], scored_items, *session_items]
            ).astype(np.int64)
        )
        n = len(item_ids)
        source = np.searchsorted(item_ids, neighbours[ITEM_ID].to_numpy())
        order = np.argsort(source, kind="stable")
        source = source[order]
        slot = np.arange(len(source)) - np.searchsorted(source, source)
        width = int(slot.max()) + 1 if len(slot) else 0
        neighbour_pos = np.full((n, width), n, dtype=np.int64)
        neighbour_weight = np.zeros((n, width))
        neighbour_pos[source, slot] = np.searchsorted(item_ids, neighbours[NEIGHBOUR_ID].to_numpy()[order])
        neighbour_weight[source, slot] = neighbours[WEIGHT].to_numpy(dtype=np.float64)[order]
        popular = popularity.sort_values([SCORE, ITEM_ID], ascending=[False, True], kind="stable")

        return cls(
            item_ids=item_ids,
            neighbour_pos=neighbour_pos,
            neighbour_weight=neighbour_weight,
            popular_pos=np.searchsorted(item_ids, popular[ITEM_ID].to_numpy()),
            popular_score=popular[SCORE].to_numpy(dtype=np.float64),
            sessions=SessionIndex.build(sequences_from(sessions, item_ids), n, rules_per_item),
        )

    def positions(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of ``items`` in ``item_ids``, and which of them the model knows."""
        if not len(self.item_ids):
            return np.zeros(len(items), dtype=np.int64), np.zeros(len(items), dtype=bool)
        pos = np.minimum(np.searchsorted(self.item_ids, items), len(self.item_ids) - 1)
        return pos, self.item_ids[pos] == items


def _known_cells(model: ModelArrays, item_arrays: pd.Series, value_arrays: pd.Series | None = None):
    """(row, item position, value) of every element of a column of item arrays that the model
    knows; ``value_arrays`` holds a value per item (a null array is empty), else values are None."""

    def flatten(column: pd.Series, dtype) -> tuple[np.ndarray, np.ndarray]:
        arrays = [np.asarray(a if a is not None else (), dtype=dtype) for a in column]
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        values = np.concatenate(arrays) if lengths.sum() else np.empty(0, dtype=dtype)
        return np.repeat(np.arange(len(arrays)), lengths), values

    row, items = flatten(item_arrays, np.int64)
    pos, known = model.positions(items)
    values = None if value_arrays is None else flatten(value_arrays, np.float64)[1][known]
    return row[known], pos[known], values


def _scaled(scores: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Each row divided by its largest absolute present score (a row without one: zeros)."""
    top = np.where(present, np.abs(scores), 0.0).max(axis=1, initial=0.0)[:, None]
    return np.divide(scores, top, out=np.zeros_like(scores), where=top > 0)


def _session_signal(frame: pd.DataFrame, model: ModelArrays, rec: RecommendConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each user's session signal over the model's items, scaled to [0, 1], and where it is set.

    The session neighbourhood (``lib.recommend.session_knn``) where it knows the session; otherwise the
    session's items vote for their ``item_neighbours``.
    """
    n, rows = len(model.item_ids), len(frame)
    user, pos, votes = _known_cells(model, frame[_EVENT_ITEMS], frame[_VOTES])
    # Column n collects the padding of short neighbour lists and is dropped.
    cells = (user[:, None] * (n + 1) + model.neighbour_pos[pos]).ravel()
    size = rows * (n + 1)
    voted = np.bincount(cells, (votes[:, None] * model.neighbour_weight[pos]).ravel(), size).reshape(rows, n + 1)
    voted_hit = (np.bincount(cells, minlength=size) > 0).reshape(rows, n + 1)[:, :n]
    signal = _scaled(voted[:, :n], voted_hit)
    hit = voted_hit
    if model.sessions.num_sessions:
        scores = session_scores(
            model.sessions,
            user,
            pos,
            rows,
            rec.session_neighbours,
            rec.session_sample,
            rec.sequence_weight,
            rec.repeat_weight,
        )
        known = scores.any(axis=1)
        signal[known] = scores[known] / scores[known].max(axis=1)[:, None]
        hit[known] = scores[known] > 0
    return signal, hit


def rank_users(frame: pd.DataFrame, model: ModelArrays, rec: RecommendConfig) -> pd.DataFrame:
    """``_RANKED_SCHEMA`` rows for the users of ``frame`` (one row per user, columns as
    prepared by ``DriverRanker.rank``)."""
    n, rows, k = len(model.item_ids), len(frame), rec.top_k
    if not n or not rows:
        return pd.DataFrame({f.name: pd.Series(dtype=_PANDAS_TYPES[f.name]) for f in _RANKED_SCHEMA})

    session, session_hit = _session_signal(frame, model, rec)

    user, pos, values = _known_cells(model, frame[_MODEL_ITEMS], frame[_MODEL_SCORES])
    modelled, modelled_hit = np.zeros((rows, n)), np.zeros((rows, n), dtype=bool)
    modelled[user, pos] = values
    modelled_hit[user, pos] = True

    user, pos, _ = _known_cells(model, frame[_EXCLUDED])
    excluded = np.zeros((rows, n), dtype=bool)
    excluded[user, pos] = True

    session_weight = rec.session_weight
    blended = session_weight * session + (1.0 - session_weight) * _scaled(modelled, modelled_hit)
    candidate = (session_hit | modelled_hit) & ~excluded
    masked = np.where(candidate, blended, -np.inf)
    take = min(k, n)
    kth = -np.partition(-masked, take - 1, axis=1)[:, take - 1]
    user, item = np.nonzero(candidate & (masked >= kth[:, None]))  # the best k, and ties with the k-th
    order = np.lexsort((item, -masked[user, item], user))
    user, item = user[order], item[order]
    rank = np.arange(len(user)) - np.searchsorted(user, user) + 1
    best = rank <= k
    user, item, rank = user[best], item[best], rank[best]
    score = masked[user, item]

    count = np.bincount(user, minlength=rows)
    short = np.flatnonzero(count < k)
    if len(short) and len(model.popular_pos):
        available = ~(candidate | excluded)[short][:, model.popular_pos]
        place = np.cumsum(available, axis=1)
        fill_row, fill_col = np.nonzero(available & (place <= (k - count[short])[:, None]))
        user = np.concatenate([user, short[fill_row]])
        item = np.concatenate([item, model.popular_pos[fill_col]])
        rank = np.concatenate([rank, count[short][fill_row] + place[fill_row, fill_col]])
        score = np.concatenate([score, model.popular_score[fill_col]])
    return pd.DataFrame(
        {
            USER_ID: frame[USER_ID].to_numpy()[user].astype(np.int32),
            SESSION_ID: frame[SESSION_ID].to_numpy()[user],
            RANK: rank.astype(np.int32),
            ITEM_ID: model.item_ids[item].astype(np.int32),
            SCORE: score.astype(np.float64),
        }
    )


# A rank slot whose new item is null (``with_rank_slots``) is deleted by the MERGE (alias ``s``).
EMPTY_SLOT = f"s.{ITEM_ID} IS NULL"


def with_rank_slots(users: DataFrame, recommendations: DataFrame, top_k: int) -> DataFrame:
    """Every rank slot (1 to ``top_k``) of ``users`` (``user_id``) with its row of
    ``recommendations``, or a null item where a user's new list is shorter (``EMPTY_SLOT``): a
    re-ranked user keeps no stale slot of a longer former list."""
    slots = users.select(USER_ID, F.explode(F.sequence(F.lit(1), F.lit(top_k))).alias(RANK))
    return slots.join(recommendations, [USER_ID, RANK], "left")


class DriverRanker:
    """A model held on the driver for the hot micro-batch (``rank_users``), with no Spark job.
    Build it once per model version (``from_model``).

    Example::

        ranker = DriverRanker.from_model(store.load(version), cfg.recommend)
        ranked = ranker.rank(context, recent, excluded)
    """

    def __init__(self, arrays: ModelArrays, user_scores: pd.DataFrame, rec: RecommendConfig):
        self.arrays, self.rec = arrays, rec
        ordered = user_scores.dropna().sort_values([USER_ID, SCORE], ascending=[True, False], kind="stable")
        users = ordered[USER_ID].to_numpy(np.int64)
        cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
        owners = users[np.r_[0, cuts]].tolist() if len(users) else []
        self._model_items = dict(zip(owners, np.split(ordered[ITEM_ID].to_numpy(np.int64), cuts)))
        self._model_scores = dict(zip(owners, np.split(ordered[SCORE].to_numpy(np.float64), cuts)))

    @classmethod
    def from_model(cls, model, rec: RecommendConfig) -> "DriverRanker":
        """:param model: a ``lib.recommend.model_store.StoredModel``."""
        user_scores = model.user_scores.select(USER_ID, ITEM_ID, SCORE).toPandas()
        arrays = ModelArrays.build(
            model.item_neighbours.select(ITEM_ID, NEIGHBOUR_ID, WEIGHT).toPandas(),
            model.popularity.select(ITEM_ID, SCORE).toPandas(),
            user_scores[ITEM_ID].dropna().unique().astype(np.int64),
            model.sessions.select(*SESSIONS_SCHEMA.fieldNames()).toPandas(),
            rec.neighbours,
        )
        return cls(arrays, user_scores, rec)

    def rank(self, context: pd.DataFrame, recent: pd.DataFrame, excluded: pd.DataFrame) -> pd.DataFrame:
        """``user_id, session_id, rank, item_id, score`` rows, ``top_k`` per user of ``context``.

        :param context: ``user_id, session_id`` of the sessions to rank for.
        :param recent: their latest events: ``user_id, event_ts`` (micros), ``item_id, event_type``,
            oldest first.
        :param excluded: ``user_id, item_id`` pairs never to recommend.
        """
        rec = self.rec
        weights = recent[EVENT_TYPE].map(rec.event_weights).fillna(0.0).to_numpy(np.float64)
        latest = recent.groupby(USER_ID)[EVENT_TS].transform("max").to_numpy(np.int64)
        age = (latest - recent[EVENT_TS].to_numpy(np.int64)) / (1_000_000.0 * rec.session_half_life_seconds)
        votes = recent.assign(_vote=weights * np.power(0.5, age))
        frame = context[[USER_ID, SESSION_ID]].reset_index(drop=True)
        users = frame[USER_ID].tolist()
        event_items = _lists_by_key(votes[USER_ID], votes[ITEM_ID])
        event_votes = _lists_by_key(votes[USER_ID], votes["_vote"])
        excluded_items = _lists_by_key(excluded[USER_ID], excluded[ITEM_ID])
        frame[_EVENT_ITEMS] = [event_items.get(u) for u in users]
        frame[_VOTES] = [event_votes.get(u) for u in users]
        frame[_MODEL_ITEMS] = [self._model_items.get(u) for u in users]
        frame[_MODEL_SCORES] = [self._model_scores.get(u) for u in users]
        frame[_EXCLUDED] = [excluded_items.get(u) for u in users]
        chunk = max(1, _CELLS_PER_CHUNK // (len(self.arrays.item_ids) + 1))
        parts = [rank_users(frame.iloc[s : s + chunk], self.arrays, rec) for s in range(0, len(frame), chunk)]
        return pd.concat(parts, ignore_index=True) if parts else rank_users(frame, self.arrays, rec)
