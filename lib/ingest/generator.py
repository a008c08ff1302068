"""Synthetic data with learnable structure: purchase history, activity files and Kafka messages.

Users have latent tastes over item groups; item popularity follows a long tail; a session is
a burst of events seconds to minutes apart (view -> maybe click -> maybe add_to_cart of the
same item), followed by a pause longer than the session gap. A small share of events arrives
out of order. Everything is deterministic for a seed.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from lib.core.schemas import ADD_TO_CART, CLICK, REQUIRED_EVENT_COLUMNS, VIEW

HEADER = ",".join(REQUIRED_EVENT_COLUMNS)


@dataclass(frozen=True)
class Catalogue:
    """Users' tastes and items' popularity shared by purchases and activity."""

    num_users: int = 100
    num_items: int = 500
    num_groups: int = 20
    taste_strength: float = 0.8
    popularity_exponent: float = 1.0
    seed: int = 42

    def build(self) -> "Tastes":
        return Tastes(self)


class Tastes:
    """Sampling of items for a user, from the catalogue's latent structure."""

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue
        rng = random.Random(catalogue.seed)
        items = list(range(1, catalogue.num_items + 1))
        ranks = items[:]
        rng.shuffle(ranks)
        self.popularity = {item: 1.0 / (rank**catalogue.popularity_exponent) for item, rank in zip(items, ranks)}
        groups = max(1, min(catalogue.num_groups, catalogue.num_items))
        self.group_items = {g: [i for i in items if (i - 1) % groups == g] for g in range(groups)}
        self.group_weights = {
            g: list(itertools.accumulate(self.popularity[i] for i in members))
            for g, members in self.group_items.items()
        }
        self.all_items = items
        self.all_weights = list(itertools.accumulate(self.popularity[i] for i in items))
        self.user_groups = {
            user: rng.sample(range(groups), k=min(2, groups)) for user in range(1, catalogue.num_users + 1)
        }

    def item_for(self, user: int, rng: random.Random) -> int:
        if rng.random() < self.catalogue.taste_strength:
            group = rng.choice(self.user_groups[user])
            return rng.choices(self.group_items[group], cum_weights=self.group_weights[group])[0]
        return rng.choices(self.all_items, cum_weights=self.all_weights)[0]


def generate_purchases(
    catalogue: Catalogue,
    num_purchases: int = 500,
    start: date = date(2023, 1, 1),
    end: date = date(2023, 12, 31),
    amount_range: tuple[float, float] = (10.0, 500.0),
) -> list[tuple[int, int, float, date]]:
    """Purchase rows ``(user_id, item_id, purchase_amount, purchase_date)`` consistent with tastes."""
    tastes = catalogue.build()
    rng = random.Random(catalogue.seed + 1)
    days = (end - start).days
    rows = []
    for _ in range(num_purchases):
        user = rng.randint(1, catalogue.num_users)
        rows.append(
            (
                user,
                tastes.item_for(user, rng),
                round(rng.uniform(*amount_range), 2),
                start + timedelta(days=rng.randint(0, days)),
            )
        )
    return rows


def purchases_table(rows) -> pa.Table:
    """Purchase rows ``(user_id, item_id, purchase_amount, purchase_date)`` (any may be None) as
    the purchase history's Parquet columns."""
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int32()),
            "item_id": pa.array([r[1] for r in rows], pa.int32()),
            "purchase_amount": pa.array([r[2] for r in rows], pa.float64()),
            "purchase_date": pa.array([r[3] for r in rows], pa.date32()),
        }
    )


@dataclass(frozen=True)
class ActivityProfile:
    """How users behave in time."""

    start: datetime = datetime(2024, 1, 1)
    mean_event_gap_s: float = 45.0
    max_event_gap_s: float = 20 * 60.0
    mean_items_per_session: float = 4.0
    min_pause_s: float = 31 * 60.0
    max_pause_s: float = 8 * 3600.0
    click_rate: float = 0.35
    cart_rate: float = 0.3
    out_of_order_share: float = 0.02
    max_out_of_order_s: float = 300.0


def simulate_events(catalogue: Catalogue, profile: ActivityProfile) -> Iterator[tuple[int, int, str, datetime]]:
    """An endless stream of events in arrival order: ``(user_id, item_id, event_type, event_time)``.

    Events are produced in event-time order per simulation step; an out-of-order event is held
    back and arrives up to ``max_out_of_order_s`` after its event time.
    """
    tastes = catalogue.build()
    rng = random.Random(catalogue.seed + 2)
    counter = itertools.count()
    # (event time, tiebreak, user, item, event type): every event is scheduled in the heap, so
    # events leave in event-time order; only the held-back share arrives out of order.
    upcoming = []
    for user in range(1, catalogue.num_users + 1):
        start = profile.start + timedelta(seconds=rng.uniform(0, 3600))
        upcoming.append((start, next(counter), user, tastes.item_for(user, rng), VIEW))
    heapq.heapify(upcoming)
    held_back: list[tuple[datetime, int, tuple]] = []
    continue_session = 1.0 - 1.0 / max(1.0, profile.mean_items_per_session)

    def gap() -> timedelta:
        return timedelta(seconds=min(profile.max_event_gap_s, rng.expovariate(1.0 / profile.mean_event_gap_s)))

    while True:
        now, _, user, item, event_type = heapq.heappop(upcoming)
        while held_back and held_back[0][0] <= now:
            yield heapq.heappop(held_back)[2]
        event = (user, item, event_type, now.replace(microsecond=0))
        if rng.random() < profile.out_of_order_share:
            arrival = now + timedelta(seconds=rng.uniform(1.0, profile.max_out_of_order_s))
            heapq.heappush(held_back, (arrival, next(counter), event))
        else:
            yield event
        if event_type == VIEW and rng.random() < profile.click_rate:
            following = (now + gap(), item, CLICK)
        elif event_type == CLICK and rng.random() < profile.cart_rate:
            following = (now + gap(), item, ADD_TO_CART)
        elif rng.random() < continue_session:
            following = (now + gap(), tastes.item_for(user, rng), VIEW)
        else:
            pause = timedelta(seconds=rng.uniform(profile.min_pause_s, profile.max_pause_s))
            following = (now + pause, tastes.item_for(user, rng), VIEW)
        heapq.heappush(upcoming, (following[0], next(counter), user, following[1], following[2]))


# Each malformed kind and the reason code the engine must give it.
MALFORMED_KINDS = {
    "missing_field": "missing_item_id",
    "bad_user_id": "bad_user_id",
    "non_positive_item_id": "non_positive_item_id",
    "unknown_event_type": "unknown_event_type",
    "bad_timestamp": "bad_timestamp",
    "too_few_fields": "field_count",
    "too_many_fields": "field_count",
}


def format_event(event: tuple[int, int, str, datetime]) -> str:
    user, item, event_type, ts = event
    return f"{user},{item},{event_type},{ts.strftime('%Y-%m-%d %H:%M:%S')}"


def malformed_line(event: tuple[int, int, str, datetime], kind: str) -> str:
    """A line of ``kind`` (a key of ``MALFORMED_KINDS``) derived from a real event."""
    user, item, event_type, ts = event
    stamp = ts.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "missing_field": f"{user},,{event_type},{stamp}",
        "bad_user_id": f"user{user},{item},{event_type},{stamp}",
        "non_positive_item_id": f"{user},-{item},{event_type},{stamp}",
        "unknown_event_type": f"{user},{item},purchase,{stamp}",
        "bad_timestamp": f"{user},{item},{event_type},{ts.strftime('%d/%m/%Y %H:%M')}",
        "too_few_fields": f"{user},{item},{event_type}",
        "too_many_fields": f"{user},{item},{event_type},{stamp},extra",
    }[kind]


@dataclass(frozen=True)
class ManifestRow:
    """Ground truth for one data line the generator wrote."""

    file: str
    line: int  # 1 = header
    raw: str
    expected_reason: str | None  # reason code for an invalid line, None for a valid one
    user_id: int | None = None
    item_id: int | None = None
    event_type: str | None = None
    event_ts: str | None = None


class ActivityWriter:
    """Writes activity files from an event stream and keeps the ground truth of every line."""

    def __init__(
        self, folder: Path, events: Iterator[tuple], prefix: str = "activity", bad_share: float = 0.0, seed: int = 42
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.events = events
        self.prefix = prefix
        self.bad_share = bad_share
        self.rng = random.Random(seed + 3)
        self.next_index = next_file_index(self.folder, prefix)
        self.manifest: list[ManifestRow] = []

    def write_file(self, num_events: int) -> Path:
        # Re-read the folder: another writer may have added files; an existing file is never replaced.
        index = max(self.next_index, next_file_index(self.folder, self.prefix))
        name = f"{self.prefix}-{index:06d}.csv"
        self.next_index = index + 1
        lines = [HEADER]
        for event in itertools.islice(self.events, num_events):
            if self.bad_share and self.rng.random() < self.bad_share:
                kind = self.rng.choice(sorted(MALFORMED_KINDS))
                line = malformed_line(event, kind)
                self.manifest.append(ManifestRow(name, len(lines) + 1, line, MALFORMED_KINDS[kind]))
            else:
                line = format_event(event)
                user, item, event_type, ts = event
                self.manifest.append(
                    ManifestRow(
                        name, len(lines) + 1, line, None, user, item, event_type, ts.strftime("%Y-%m-%d %H:%M:%S")
                    )
                )
            lines.append(line)
        return write_atomically(self.folder, name, lines)


def next_file_index(folder: Path, prefix: str) -> int:
    """One past the highest ``<prefix>-NNNNNN.csv`` already in ``folder`` (files are never overwritten)."""
    indexes = [
        int(name[len(prefix) + 1 : -4])
        for name in os.listdir(folder)
        if name.startswith(prefix + "-") and name.endswith(".csv") and name[len(prefix) + 1 : -4].isdigit()
    ]
    return max(indexes, default=0) + 1


def write_atomically(folder: Path, name: str, lines: list[str]) -> Path:
    """Write under a hidden name, then rename into place, so readers never see a partial file.

    Refuses to replace an existing file: the stream reads each file name once, so new content
    under an old name would be silently ignored.
    """
    final = folder / name
    if final.exists():
        raise FileExistsError(f"{final} exists; activity files are never overwritten")
    hidden = folder / f".{name}.tmp"
    hidden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.link(hidden, final)  # fails instead of replacing if the name appeared meanwhile
    hidden.unlink()
    return final


def event_message(event: tuple[int, int, str, datetime]) -> dict:
    """An event as the Kafka source's JSON object."""
    user, item, event_type, ts = event
    return {"user_id": user, "item_id": item, "event_type": event_type, "timestamp": ts.strftime("%Y-%m-%d %H:%M:%S")}


# Each malformed message kind and the reason code the engine must give it.
MALFORMED_MESSAGE_KINDS = {
    "missing_field": "missing_item_id",
    "bad_user_id": "bad_user_id",
    "non_positive_item_id": "non_positive_item_id",
    "unknown_event_type": "unknown_event_type",
    "bad_timestamp": "bad_timestamp",
    "not_json": "not_a_json_object",
    "json_array": "not_a_json_object",
}


def malformed_message(event: tuple[int, int, str, datetime], kind: str) -> str:
    """A message of ``kind`` (a key of ``MALFORMED_MESSAGE_KINDS``) derived from a real event."""
    good = event_message(event)
    if kind == "not_json":
        return json.dumps(good)[:-7]
    if kind == "json_array":
        return json.dumps([good])
    changes = {
        "missing_field": {"item_id": None},
        "bad_user_id": {"user_id": f"user{good['user_id']}"},
        "non_positive_item_id": {"item_id": -good["item_id"]},
        "unknown_event_type": {"event_type": "purchase"},
        "bad_timestamp": {"timestamp": event[3].strftime("%d/%m/%Y %H:%M")},
    }[kind]
    return json.dumps({**good, **changes})


class KafkaActivityWriter:
    """Produces activity to a Kafka topic as JSON messages keyed by user (a user's events stay in
    one partition, in order) and keeps the ground truth of every message: ``ManifestRow.file`` is
    its ``kafka://<topic>/<partition>/<offset>``, ``line`` its offset."""

    def __init__(self, bootstrap: str, topic: str, events: Iterator[tuple], bad_share: float = 0.0, seed: int = 42):
        from confluent_kafka import Producer

        self.topic = topic
        self.events = events
        self.bad_share = bad_share
        self.rng = random.Random(seed + 3)
        # Idempotent: a retried send after a lost acknowledgement is not written twice.
        # librdkafka's warnings (a new topic's coordinator still loading, retried) are noise here;
        # errors still print.
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, "log_level": 3}
        )
        self.manifest: list[ManifestRow] = []

    def write_batch(self, num_events: int, timeout_s: float = 60.0) -> int:
        """Produce ``num_events`` messages and wait until the broker has them all; raises
        ``RuntimeError`` with the broker's reason if any was refused (too large, no topic)."""
        pending: list[tuple[str, str | None, tuple | None]] = []
        for event in itertools.islice(self.events, num_events):
            if self.bad_share and self.rng.random() < self.bad_share:
                kind = self.rng.choice(sorted(MALFORMED_MESSAGE_KINDS))
                pending.append((malformed_message(event, kind), MALFORMED_MESSAGE_KINDS[kind], None))
            else:
                pending.append((json.dumps(event_message(event)), None, event))
        return self.produce(pending, timeout_s)

    def produce(self, messages: list[tuple[str, str | None, tuple | None]], timeout_s: float = 60.0) -> int:
        """Produce ``(value, expected_reason, event)`` triples; the event (None for a malformed
        message) keys the message and fills its manifest row."""
        from confluent_kafka import KafkaException

        failures: list[str] = []
        rows: list[ManifestRow | None] = [None] * len(messages)

        def delivered(index: int, value: str, reason: str | None, event: tuple | None):
            def callback(error, message) -> None:
                if error is not None:
                    failures.append(f"{error.str()} ({len(value)} bytes)")
                    return
                where = f"kafka://{message.topic()}/{message.partition()}/{message.offset()}"
                if event is None:
                    rows[index] = ManifestRow(where, message.offset(), value, reason)
                else:
                    user, item, event_type, ts = event
                    stamp = ts.strftime("%Y-%m-%d %H:%M:%S")
                    rows[index] = ManifestRow(where, message.offset(), value, None, user, item, event_type, stamp)

            return callback

        for index, (value, reason, event) in enumerate(messages):
            key = str(event[0]) if event is not None else None
            callback = delivered(index, value, reason, event)
            while True:
                try:
                    self.producer.produce(self.topic, value=value.encode(), key=key, on_delivery=callback)
                    break
                except BufferError:  # the client's queue is full: let deliveries drain it
                    self.producer.poll(0.5)
                except KafkaException as exc:  # refused before sending, e.g. over message.max.bytes
                    failures.append(f"{exc.args[0].str()} ({len(value)} bytes)")
                    break
            self.producer.poll(0)
        left = self.producer.flush(timeout_s)
        if failures or left:
            raise RuntimeError(
                f"Kafka refused {len(failures)} of {len(messages)} messages ({', '.join(sorted(set(failures))[:3])}); "
                f"{left} still unacknowledged after {timeout_s:.0f} s. A message over the broker's size limit "
                "(message.max.bytes, 1 MiB by default) must be made smaller; a missing topic must be created first."
            )
        self.manifest.extend(row for row in rows if row is not None)
        return len(messages)

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for what is in flight, then release the client (it stops reconnecting)."""
        self.producer.flush(timeout_s)
        self.producer.close()
