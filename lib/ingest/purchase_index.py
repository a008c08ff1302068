"""Point-in-time purchase features on the driver, for the hot micro-batch.

The contract's rules: for a row as of ``t``, ``past_purchases`` counts the
user's purchases with ``purchase_date < to_date(t)`` (UTC) and ``avg_purchase_amount`` is the mean
non-null amount of exactly those (null when there is none). The purchase history is held as arrays
sorted by (user, date) with running counts and sums, so a batch's lookups are two binary searches
each (numpy ``searchsorted``), with no Spark join and no broadcast per batch. It is built again only
when the history's files change (``PurchaseHistory``).

Example::

    index = PurchaseIndex.from_arrow(purchases_table)
    past, avg = index.as_of(user_ids, event_micros)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from lib.core.schemas import ITEM_ID, PURCHASE_AMOUNT, PURCHASE_DATE, USER_ID
from lib.features.profiles import PurchaseTotals
from lib.ingest.sources import read_purchases

log = logging.getLogger(__name__)

_MICROS_PER_DAY = 86_400_000_000
# (user, day) packed in one int64: the user in the high 32 bits, the day (offset to be >= 0) below.
_DAY_OFFSET = 1 << 31


def _keys(users: np.ndarray, days: np.ndarray) -> np.ndarray:
    return (users.astype(np.int64) << 32) | (days.astype(np.int64) + _DAY_OFFSET)


@dataclass(frozen=True)
class PurchaseIndex:
    """The purchase history, sorted by (user, date), with running totals."""

    keys: np.ndarray  # int64 (user, day), ascending
    running_count: np.ndarray  # purchases before each position (len(keys) + 1)
    running_amounts: np.ndarray  # per user, the non-null amounts' running count and sum (len(keys) + 1, 2)
    items: np.ndarray  # the item of each purchase (-1 where null)

    @classmethod
    def from_arrow(cls, purchases: pa.Table) -> PurchaseIndex:
        """:param purchases: ``user_id, purchase_amount, purchase_date`` (rows lacking the user or
        the date never count, as in the Spark join)."""
        users = purchases.column(USER_ID).to_numpy(zero_copy_only=False)
        days = purchases.column(PURCHASE_DATE).cast(pa.int32()).to_numpy(zero_copy_only=False)
        amounts = purchases.column(PURCHASE_AMOUNT).to_numpy(zero_copy_only=False).astype(np.float64)
        items = purchases.column(ITEM_ID).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        known = ~(np.isnan(users.astype(np.float64)) | np.isnan(days.astype(np.float64)))
        users, days, amounts, items = users[known], days[known], amounts[known], items[known]
        keys = _keys(users, days)
        order = np.argsort(keys, kind="stable")
        keys, amounts, items = keys[order], amounts[order], items[order]
        has_amount = ~np.isnan(amounts)
        running_count = np.concatenate([[0], np.arange(1, len(keys) + 1)])
        # Sums restart at each user's first purchase and add in date order, as an aggregate over
        # the user's rows would: a difference of global running sums would lose precision.
        owner = pd.Series(keys >> 32)
        running_amounts = np.zeros((len(keys) + 1, 2))
        running_amounts[1:, 0] = pd.Series(has_amount.astype(np.int64)).groupby(owner).cumsum().to_numpy()
        running_amounts[1:, 1] = pd.Series(np.where(has_amount, amounts, 0.0)).groupby(owner).cumsum().to_numpy()
        return cls(keys, running_count, running_amounts, items)

    @classmethod
    def empty(cls) -> PurchaseIndex:
        return cls(np.empty(0, np.int64), np.zeros(1, np.int64), np.zeros((1, 2)), np.empty(0, np.int64))

    def items_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(user, item)`` pairs of everything ``users`` bought (purchases of a null item aside)."""
        users = np.asarray(users, np.int64)
        first = np.searchsorted(self.keys, users << 32, side="left")
        last = np.searchsorted(self.keys, (users + 1) << 32, side="left")
        counts = last - first
        positions = np.repeat(first - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(counts.sum())
        owners, items = np.repeat(users, counts), self.items[positions]
        return owners[items >= 0], items[items >= 0]

    def as_of(self, users: np.ndarray, micros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``past_purchases`` (int64) and ``avg_purchase_amount`` (float64, NaN for null) of each
        (user, timestamp in microseconds since the epoch, UTC)."""
        days = np.floor_divide(micros.astype(np.int64), _MICROS_PER_DAY)
        first = np.searchsorted(self.keys, _keys(users, np.full(len(users), -_DAY_OFFSET)), side="left")
        before = np.searchsorted(self.keys, _keys(users, days), side="left")
        count = self.running_count[before] - self.running_count[first]
        # Each user's running totals start at their first purchase: the totals before ``before``.
        amounts = np.where((before > first)[:, None], self.running_amounts[before], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            avg = np.where(amounts[:, 0] > 0, amounts[:, 1] / amounts[:, 0], np.nan)
        return count.astype(np.int64), avg


class PurchaseHistory:
    """The purchase history at ``path`` on the driver, read again only when its files change:
    as a ``PurchaseIndex`` (point-in-time lookups) and as ``PurchaseTotals`` (the profiles'
    purchase part)."""

    def __init__(self, spark, path: str, purchase_weight: float):
        self.spark, self.path, self.purchase_weight = spark, path, purchase_weight
        self.files: tuple[str, ...] | None = None
        self._index: PurchaseIndex | None = None
        self._totals: PurchaseTotals | None = None

    def _refresh(self) -> None:
        purchases = read_purchases(self.spark, self.path)
        files = tuple(sorted(purchases.inputFiles()))
        if files != self.files:
            table = purchases.toArrow()
            self._index = PurchaseIndex.from_arrow(table)
            self._totals = PurchaseTotals.from_arrow(table, self.purchase_weight)
            self.files = files
            log.info("purchase history: %d purchases from %d file(s)", table.num_rows, len(files))

    def current(self, refresh: bool = True) -> PurchaseIndex:
        """The index of the history's current files; with ``refresh`` False, of the files last
        read (the history's files are not listed again) unless none were."""
        if refresh or self._index is None:
            self._refresh()
        return self._index

    def totals(self) -> PurchaseTotals:
        self._refresh()
        return self._totals
