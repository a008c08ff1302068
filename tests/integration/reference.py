"""An independent reference implementation of the contract's semantics, in pandas, computed
from the generator's ground truth. The stream's tables are compared against it."""

from __future__ import annotations

import pandas as pd

from lib.ingest.generator import ManifestRow


def valid_events(manifest: list[ManifestRow]) -> pd.DataFrame:
    rows = [r for r in manifest if r.expected_reason is None]
    df = pd.DataFrame(
        {
            "user_id": [r.user_id for r in rows],
            "item_id": [r.item_id for r in rows],
            "event_type": [r.event_type for r in rows],
            "event_ts": pd.to_datetime([r.event_ts for r in rows]),
            "file": [r.file for r in rows],
            "line": [r.line for r in rows],
        }
    )
    return df


def purchase_features(events: pd.DataFrame, as_of: pd.Series, purchases: pd.DataFrame) -> pd.DataFrame:
    """past_purchases / avg_purchase_amount as of each row's timestamp, by brute force."""
    out = []
    for user, ts in zip(events["user_id"], as_of):
        day = ts.normalize()
        mine = purchases[(purchases.user_id == user) & (pd.to_datetime(purchases.purchase_date) < day)]
        out.append((len(mine), mine.purchase_amount.mean() if len(mine) else None))
    return pd.DataFrame(out, columns=["past_purchases", "avg_purchase_amount"], index=events.index)


def sessions(events: pd.DataFrame, gap_s: float) -> pd.DataFrame:
    """Sessions per user: sort by time (ties in file order); a gap > gap_s starts a new one."""
    ordered = events.sort_values(["user_id", "event_ts", "file", "line"]).reset_index(drop=True)
    gaps = ordered.groupby("user_id")["event_ts"].diff().dt.total_seconds()
    ordered["seq"] = (gaps.isna() | (gaps > gap_s)).groupby(ordered["user_id"]).cumsum()
    grouped = ordered.groupby(["user_id", "seq"])
    result = grouped.agg(
        session_start=("event_ts", "min"),
        session_end=("event_ts", "max"),
        num_events=("event_ts", "size"),
        num_views=("event_type", lambda s: int((s == "view").sum())),
        num_clicks=("event_type", lambda s: int((s == "click").sum())),
        num_add_to_cart=("event_type", lambda s: int((s == "add_to_cart").sum())),
        last_event=("event_type", "last"),
    ).reset_index()
    result["session_length_s"] = (result.session_end - result.session_start).dt.total_seconds()
    gaps_in_session = (
        ordered.assign(gap=gaps.where(ordered["seq"].eq(ordered.groupby("user_id")["seq"].shift())))
        .groupby(["user_id", "seq"])["gap"]
        .mean()
    )
    result["avg_time_gap_s"] = gaps_in_session.values
    return result.drop(columns="seq")
