"""The HTTP API over the online store: live sessions, recommendations, profiles, health.

No Spark in this process: it reads the store the stream writes (``lib.serve.online_store``), so a
request costs a primary-key lookup in SQLite. ``jobs/serve.py`` runs it with uvicorn.

- ``GET /users/{user_id}/recommendations?k=N``: live recommendations when the user has them,
  else the batch model's, else the most popular items; ``source`` says which.
- ``GET /users/{user_id}/session``, ``GET /users/{user_id}/profile``: the row, 404 when none.
- ``GET /health``: the last micro-batch the store has seen.

A ``user_id`` that is not a positive integer gets 422; a missing or unreadable store 503.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from lib.serve.online_store import OnlineStore, StoreUnavailable, iso_utc

UserId = Annotated[int, Path(gt=0, le=2**31 - 1, description="a positive user id")]


def create_app(open_store, top_k: int) -> FastAPI:
    """The API reading the store that ``open_store()`` returns (called once per request until it
    succeeds, so the API may start before the stream has created the store).

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

    @app.get("/users/{user_id}/profile")
    async def profile(user_id: UserId):
        doc = store().profile(user_id)
        return doc if doc is not None else not_found("profile", user_id)

    @app.get("/health")
    async def health():
        return {"status": "ok", **store().health()}

    return app


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
