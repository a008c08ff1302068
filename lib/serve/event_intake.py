"""Events sent over HTTP (``POST /users/{id}/events``, ``POST /events``), handed to the
stream's configured source.

Each event is checked with the CSV line's rules (``lib.ingest.line_parsing.check_event``): a
request with one bad event is refused whole, with that event's reason code. Accepted events go:

- ``source.kind = "files"``: to ``FileLander``, which gathers what arrives within ``window_s``
  into one CSV file, written under a hidden name (the stream's file source skips names starting
  with ``.``), flushed to disk, then renamed into ``paths.events_dir``: the stream sees the whole
  file or nothing, and a request is answered only once its file has landed;
- ``"kafka"``: to ``KafkaProducer``, one JSON message per event keyed by user, answered once the
  broker has acknowledged every message (idempotent producer, ``acks=all``).

Nothing answered 202 is lost if the API dies right after: it is on disk or in the broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

from lib.core.schemas import EVENT_TYPE, ITEM_ID, TIMESTAMP, USER_ID
from lib.ingest.line_parsing import check_event, json_field_text

log = logging.getLogger(__name__)

MAX_EVENTS_PER_REQUEST = 10_000
_HEADER = f"{USER_ID},{ITEM_ID},{EVENT_TYPE},{TIMESTAMP}"
_UTC_OFFSET = re.compile(r"T.*([Zz]|[+-][0-9]{2}:?[0-9]{2})$")


class EventRejected(ValueError):
    """A request's event broke a rule: ``reason`` is the quarantine's reason code and detail."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"event {index}: {reason}")
        self.index, self.reason = index, reason

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]


def _timestamp_text(value) -> str | None:
    """The contract's ``YYYY-MM-DD HH:MM:SS[.ffffff]`` (UTC) of a JSON timestamp: that form, or
    ISO-8601 with an offset (``2024-05-01T10:00:00Z``), converted to UTC; absent: now."""
    if value is None:
        return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, str) and _UTC_OFFSET.search(value.strip()):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return value
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return json_field_text(value)


def validated_events(events: list, user_id: int | None = None) -> list[tuple[int, int, str, str]]:
    """``(user_id, item_id, event_type, timestamp text)`` of each JSON event, in order.

    :param user_id: the path's user (each event then carries no ``user_id``); None: each event
        carries its own.
    :raises EventRejected: at the first event that breaks a rule.
    """
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise EventRejected(MAX_EVENTS_PER_REQUEST, f"too_many_events: at most {MAX_EVENTS_PER_REQUEST} a request")
    checked = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise EventRejected(index, "bad_event: not a JSON object")
        user = user_id if user_id is not None else event.get(USER_ID)
        timestamp = _timestamp_text(event.get(TIMESTAMP))
        user, item, event_type, _, reason = check_event(
            json_field_text(user),
            json_field_text(event.get(ITEM_ID)),
            json_field_text(event.get(EVENT_TYPE)),
            timestamp,
        )
        if reason:
            raise EventRejected(index, reason)
        checked.append((user, item, event_type, timestamp))
    return checked


def csv_text(events: list[tuple[int, int, str, str]]) -> str:
    return "\n".join([_HEADER, *(f"{u},{i},{t},{ts}" for u, i, t, ts in events)]) + "\n"


class FileLander:
    """Lands accepted events in ``events_dir``, one CSV file per ``window_s`` of requests."""

    def __init__(self, events_dir: str | Path, window_s: float = 0.2):
        self.events_dir, self.window_s = Path(events_dir), window_s
        self._waiting: list[tuple[list, asyncio.Future]] = []
        self._flush: asyncio.Task | None = None

    @property
    def destination(self) -> str:
        return str(self.events_dir)

    async def submit(self, events: list[tuple[int, int, str, str]]) -> str:
        """The path of the file that holds ``events``, once it has landed."""
        landed = asyncio.get_running_loop().create_future()
        self._waiting.append((events, landed))
        if self._flush is None:
            self._flush = asyncio.create_task(self._land_after_window())
        return await landed

    async def _land_after_window(self) -> None:
        await asyncio.sleep(self.window_s)
        waiting, self._waiting, self._flush = self._waiting, [], None
        try:
            path = await asyncio.to_thread(self.land, [e for events, _ in waiting for e in events])
        except Exception as exc:  # each request waiting on this file gets the error
            for _, landed in waiting:
                landed.set_exception(exc)
            return
        for _, landed in waiting:
            landed.set_result(str(path))

    def land(self, events: list[tuple[int, int, str, str]]) -> Path:
        """Write ``events`` as one CSV file under a hidden name, flush it, rename it in."""
        self.events_dir.mkdir(parents=True, exist_ok=True)
        name = f"api-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.csv"
        hidden, final = self.events_dir / f".{name}.tmp", self.events_dir / name
        with open(hidden, "w", encoding="utf-8") as out:
            out.write(csv_text(events))
            out.flush()
            os.fsync(out.fileno())
        os.rename(hidden, final)
        directory = os.open(self.events_dir, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        log.info("landed %d events in %s", len(events), final)
        return final


class KafkaProducer:
    """Produces accepted events to the stream's Kafka topic and waits for the broker's acks."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 30.0):
        from confluent_kafka import Producer

        self.topic, self.timeout_s = topic, timeout_s
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5, "log_level": 3}
        )

    @property
    def destination(self) -> str:
        return f"kafka://{self.topic}"

    async def submit(self, events: list[tuple[int, int, str, str]]) -> str:
        await asyncio.to_thread(self.produce, events)
        return self.destination

    def produce(self, events: list[tuple[int, int, str, str]]) -> None:
        """Produce every event; raises ``RuntimeError`` unless the broker acknowledged them all."""
        failures: list[str] = []

        def delivered(error, _message):
            if error is not None:
                failures.append(str(error))

        for user, item, event_type, timestamp in events:
            value = json.dumps({USER_ID: user, ITEM_ID: item, EVENT_TYPE: event_type, TIMESTAMP: timestamp})
            self._producer.produce(self.topic, value=value, key=str(user), on_delivery=delivered)
            self._producer.poll(0)
        left = self._producer.flush(self.timeout_s)
        if failures or left:
            raise RuntimeError(
                f"Kafka did not acknowledge {len(failures) + left} of {len(events)} events on topic {self.topic!r}: "
                + "; ".join(failures[:3] or ["timed out"])
            )


def event_sink(cfg):
    """The configured source's intake: ``FileLander`` or ``KafkaProducer``."""
    if cfg.source.kind == "kafka":
        return KafkaProducer(cfg.kafka.bootstrap_servers, cfg.kafka.topic)
    return FileLander(cfg.paths.events_dir)
