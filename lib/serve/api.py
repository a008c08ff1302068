"""The HTTP API over the online store: live sessions, recommendations, profiles, health.

No Spark in this process: it reads the store the stream writes (``lib.serve.online_store``), so a
request costs a primary-key lookup in SQLite. ``jobs/serve.py`` runs it with uvicorn.

- ``GET /users/{user_id}/recommendations?k=N``: live recommendations when the user has them,
  else the batch model's, else the most popular items; ``source`` says which.
- ``GET /users/{user_id}/session``, ``GET /users/{user_id}/profile``: the row, 404 when none.
- ``GET /users/{user_id}/events``: the latest events of the user's open session, newest first.
- ``GET /health``: the last micro-batch the store has seen.
- ``GET /stream``: the recent micro-batches, rates, delays and popular items (for the console).
- ``GET /``: the live console (``console.html``, one page over these endpoints).
- ``POST /users/{user_id}/events`` (one JSON event) and ``POST /events`` (a JSON list of events,
  each with its ``user_id``): 202 once the events are handed durably to the stream's source
  (``lib.serve.event_intake``); 422 with the reason code of the first bad event, and nothing of
  that request written.

A ``user_id`` that is not a positive integer gets 422; a missing or unreadable store 503.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from lib.serve.event_intake import EventRejected, validated_events
from lib.serve.online_store import OnlineStore, StoreUnavailable, iso_utc

CONSOLE_PAGE = FilePath(__file__).with_name("console.html")
UserId = Annotated[int, Path(gt=0, le=2**31 - 1, description="a positive user id")]


def create_app(open_store, top_k: int, intake=None) -> FastAPI:
    """The API reading the store that ``open_store()`` returns (called once per request until it
    succeeds, so the API may start before the stream has created the store), and handing events
    to ``intake`` (``event_intake.event_sink``; None: no event endpoints).

    The handlers run on the event loop itself, not each in a worker thread: a request is one
    primary-key lookup in SQLite, and the hand-off to a thread and back cost more (README,
    Performance)."""
    app = FastAPI(title="streamrec", summary="Live sessions and recommendations, served from the online store")
    opened: list[OnlineStore] = []

    def store() -> OnlineStore:
        if not opened:
            opened.append(open_store())
        return opened[0]

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_request: Request, exc: StoreUnavailable):
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": "; ".join(problems), "errors": exc.errors()})

    def not_found(what: str, user_id: int) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": f"user {user_id} has no {what}"})

    @app.get("/users/{user_id}/recommendations")
    async def recommendations(user_id: UserId, k: Annotated[int | None, Query(gt=0, le=1000)] = None):
        k = k or top_k
        current = store()
        live = current.live_recommendations(user_id)
        if live is not None:
            return _recommendations(user_id, "live", live, k)
        batch = current.batch_recommendations(user_id)
        if batch is not None:
            return _recommendations(user_id, "batch", {**batch, "session_id": None}, k)
        popular = current.popular_items(k)
        return {
            "user_id": user_id,
            "source": "popular",
            "model_version": "popularity",
            "generated_at": iso_utc(datetime.now(timezone.utc)),
            "session_id": None,
            "items": [{"item_id": item, "score": score, "rank": rank} for rank, (item, score) in enumerate(popular, 1)],
        }

    @app.get("/users/{user_id}/session")
    async def session(user_id: UserId):
        doc = store().session(user_id)
        return doc if doc is not None else not_found("session", user_id)

    @app.get("/users/{user_id}/events")
    async def session_events(user_id: UserId):
        """The latest events of the user's open session, newest first (empty when none is open)."""
        return {"user_id": user_id, "events": store().session_events(user_id)}

    @app.get("/users/{user_id}/profile")
    async def profile(user_id: UserId):
        doc = store().profile(user_id)
        return doc if doc is not None else not_found("profile", user_id)

    @app.get("/health")
    async def health():
        return {"status": "ok", **store().health()}

    @app.get("/stream")
    async def stream(minutes: Annotated[int, Query(gt=0, le=60)] = 5):
        """The stream as the console shows it: its recent micro-batches (the last ``minutes``),
        its rates over the last minute, the delay from a file's landing to the store, and the
        items most popular now."""
        current = store()
        now = time.time()
        batches = current.recent_batches(now - 60 * minutes)
        last_minute = [b for b in batches if b["finished_at"] > now - 60]
        delays = sorted(b["store_delay_s"] for b in batches if b["store_delay_s"] is not None)
        return {
            **current.health(),
            "minutes": minutes,
            "latest_event_at": current.latest_event_at(),
            "batches_per_minute": len(last_minute),
            "events_per_minute": sum(b["input_rows"] for b in last_minute),
            "quarantined_rows": sum(b["quarantined_rows"] for b in batches),
            "store_delay_s": {"p50": _percentile(delays, 0.50), "p95": _percentile(delays, 0.95)},
            "batches": [
                {**b, "finished_at": iso_utc(datetime.fromtimestamp(b["finished_at"], timezone.utc))} for b in batches
            ],
            "popular": [{"item_id": item, "score": score} for item, score in current.popular_items(10)],
        }

    @app.get("/", response_class=HTMLResponse)
    async def console():
        return HTMLResponse(CONSOLE_PAGE.read_text(encoding="utf-8"))

    if intake is not None:

        async def accept(request: Request, user_id: int | None) -> JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse(status_code=422, content={"detail": "bad_json: the body is not JSON"})
            expected = dict if user_id is not None else list
            if not isinstance(body, expected):
                what = "a JSON object" if user_id is not None else "a JSON list of events"
                return JSONResponse(status_code=422, content={"detail": f"bad_event: the body must be {what}"})
            try:
                events = validated_events([body] if user_id is not None else body, user_id)
            except EventRejected as exc:
                return JSONResponse(
                    status_code=422, content={"detail": str(exc), "reason": exc.code, "index": exc.index}
                )
            if not events:
                return JSONResponse(status_code=202, content={"accepted": 0, "destination": None})
            try:
                destination = await intake.submit(events)
            except Exception as exc:  # nothing was acknowledged: the client may send again
                return JSONResponse(
                    status_code=503,
                    content={"detail": f"the events could not be handed to {intake.destination}: {exc}"},
                )
            return JSONResponse(status_code=202, content={"accepted": len(events), "destination": destination})

        @app.post("/users/{user_id}/events", status_code=202)
        async def user_events(user_id: UserId, request: Request):
            return await accept(request, user_id)

        @app.post("/events", status_code=202)
        async def events(request: Request):
            return await accept(request, None)

    return app


def _percentile(ordered: list[float], share: float) -> float | None:
    """The nearest-rank percentile of sorted values (None when there are none)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))], 3)


def _recommendations(user_id: int, source: str, doc: dict, k: int) -> dict:
    items = sorted(doc.get("items") or [], key=lambda item: item["rank"])[:k]
    return {
        "user_id": user_id,
        "source": source,
        "model_version": doc.get("model_version"),
        "generated_at": doc.get("generated_at"),
        "session_id": doc.get("session_id"),
        "items": [{"item_id": i["item_id"], "score": i["score"], "rank": i["rank"]} for i in items],
    }
