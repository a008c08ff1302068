"""Online-store documents (``lib.serve.online_store``), built on the driver: their time text
(``iso_text``), and the recommendation documents of the live micro-batch's rankings, the batch
job's published recommendations and a rebuilt store's copy of ``live_recommendations``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from lib.core.schemas import GENERATED_AT, ITEM_ID, MODEL_VERSION, RANK, SCORE, SESSION_ID, USER_ID

ITEMS = "items"


def iso_text(moments: pd.Series) -> np.ndarray:
    """The store's ISO-8601 UTC text (``2024-03-01T00:24:30.000000Z``) of timestamps (naive ones
    are UTC) or of epoch microseconds; None where null. numpy formats it: pandas' ``strftime``
    took 7 times as long, most of a profile pass's documents."""
    if pd.api.types.is_datetime64_any_dtype(moments):
        if moments.dt.tz is not None:
            moments = moments.dt.tz_convert("UTC").dt.tz_localize(None)
        stamps = moments.to_numpy("datetime64[us]")
    else:
        stamps = pd.array(moments, dtype="Int64").to_numpy("int64", na_value=np.iinfo(np.int64).min)
        stamps = stamps.astype("datetime64[us]")  # the smallest int64 is NaT
    text = np.char.add(np.datetime_as_string(stamps, unit="us"), "Z").astype(object)
    return np.where(np.isnat(stamps), None, text)


def recommendation_documents(rows: pd.DataFrame) -> list[tuple[int, str]]:
    """``(user_id, JSON)`` per user of recommendation rows (one per user and rank: ``user_id,
    rank, item_id, score``, and the user's ``model_version``, ``generated_at`` and, for live ones,
    ``session_id``): ``{user_id, [session_id,] model_version, generated_at, items}``, the items
    ``{rank, item_id, score}`` best first."""
    per_user = [c for c in (SESSION_ID, MODEL_VERSION, GENERATED_AT) if c in rows.columns]
    rows = rows.sort_values([USER_ID, RANK], kind="stable")
    if GENERATED_AT in per_user and pd.api.types.is_datetime64_any_dtype(rows[GENERATED_AT]):
        rows = rows.assign(**{GENERATED_AT: iso_text(rows[GENERATED_AT])})
    users = rows[USER_ID].to_numpy(np.int64)
    if not len(users):
        return []
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]).tolist()
    heads = {c: rows[c].to_numpy()[starts].tolist() for c in per_user}
    # The items' JSON text put together from numpy's shortest round-trip text of each number (the
    # same as json.dumps'): a json.dumps per document took 77 us, most of a ranking's documents.
    texts = (
        rows[c].to_numpy(t).astype(str).tolist() for c, t in ((RANK, np.int64), (ITEM_ID, np.int64), (SCORE, float))
    )
    items = [f'{{"{RANK}": {r}, "{ITEM_ID}": {i}, "{SCORE}": {s}}}' for r, i, s in zip(*texts)]
    docs = []
    for n, (first, end) in enumerate(zip(starts, [*starts[1:], len(users)])):
        head = json.dumps({USER_ID: int(users[first]), **{c: heads[c][n] for c in per_user}})
        docs.append((int(users[first]), f'{head[:-1]}, "{ITEMS}": [{", ".join(items[first:end])}]}}'))
    return docs
