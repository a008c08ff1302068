"""Freshness and latency of the HTTP API, measured from outside the engine as a client sees them.

- ``ServingProbe``: for one activity file in five, the event with the latest timestamp in it
  (user u, time t); the probe polls ``GET /users/u/session`` until the served session reaches t
  (``session_end >= t``: files arrive in event-time order, so only that file can have brought
  it), then ``GET /users/u/recommendations`` until live recommendations of that session and of
  that micro-batch or later are served. Delays are from the file's landing (its modification
  time: files land by rename).
- ``api_load``: a fixed rate of requests over random users for a while; latency percentiles.
"""

from __future__ import annotations

import csv
import http.client
import json
import multiprocessing
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


class ApiProcess:
    """``jobs/serve.py`` on ``port`` for the config at ``config``, stopped by pid."""

    def __init__(self, config: Path, port: int, log: Path):
        self.port = port
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "jobs/serve.py", "--config", str(config), "--set", f"serve.port={port}"],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while get(port, "/health")[0] is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {log}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


_connections = threading.local()


def get(port: int, path: str) -> tuple[int | None, dict | None]:
    """(status, JSON body) of ``GET path`` on 127.0.0.1, over a kept-alive connection per thread;
    (None, None) when nothing answers."""
    connection = getattr(_connections, "by_port", {}).get(port)
    for _attempt in range(2):
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            _connections.__dict__.setdefault("by_port", {})[port] = connection
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException):
            connection.close()
            _connections.by_port.pop(port, None)
            connection = None
    return None, None


def _latest_event(path: Path) -> tuple[int, str] | None:
    """(user_id, timestamp text) of the file's latest valid-looking event."""
    best = None
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        for row in csv.DictReader(handle):
            try:
                user, ts = int(row["user_id"]), row["timestamp"].strip().replace("T", " ")
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            if user > 0 and len(ts) >= 19 and (best is None or ts > best[1]):
                best = (user, ts)
    return best


class ServingProbe(threading.Thread):
    """Measures when the API serves new activity: one file in ``every`` landing in ``incoming``,
    or the events handed to ``submit`` (Kafka input)."""

    def __init__(
        self,
        incoming: Path | None,
        port: int,
        since: float,
        poll_s: float = 0.5,
        every: int = 5,
        timeout_s: float = 600.0,
    ):
        super().__init__(daemon=True, name="serving-probe")
        self.incoming, self.port, self.since = incoming, port, since
        # Probing every file every 0.1 s was itself a load (hundreds of requests a second once the
        # stream lags), which slowed the stream it measured on the same 2 cores: one file in
        # ``every``, polled every ``poll_s``.
        self.poll_s, self.every, self.timeout_s = poll_s, every, timeout_s
        self.results: dict[str, list[tuple[float, float]]] = {"api_session": [], "api_live_recommendations": []}
        self.unserved = 0
        self._stopping = threading.Event()
        self._submitted: list[dict] = []
        self._submitted_lock = threading.Lock()

    def submit(self, arrived: float, user: int, ts: str) -> None:
        """Probe for the event of ``user`` at ``ts`` (``YYYY-MM-DD HH:MM:SS``) that arrived then."""
        with self._submitted_lock:
            self._submitted.append({"landed": arrived, "user": user, "ts": ts})

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=30)

    def run(self) -> None:
        seen: set[str] = set()
        pending: list[dict] = []
        while not self._stopping.is_set():
            with self._submitted_lock:
                pending.extend(self._submitted)
                self._submitted.clear()
            for path in sorted(self.incoming.glob("activity-*.csv")) if self.incoming else []:
                if path.name in seen:
                    continue
                seen.add(path.name)
                landed = path.stat().st_mtime
                sampled = landed >= self.since and len(seen) % self.every == 0
                latest = _latest_event(path) if sampled else None
                if latest is not None:
                    pending.append({"landed": landed, "user": latest[0], "ts": latest[1]})
            for probe in list(pending):
                self._check(probe)
                if "recs" in probe or time.time() - probe["landed"] > self.timeout_s:
                    pending.remove(probe)
                    if "recs" not in probe:
                        self.unserved += 1
            time.sleep(self.poll_s)

    def _check(self, probe: dict) -> None:
        now = time.time()
        if "session" not in probe:
            status, session = get(self.port, f"/users/{probe['user']}/session")
            ended = (session or {}).get("session_end") or ""
            if status != 200 or ended.replace("T", " ")[:26] < probe["ts"]:
                return
            probe["session"], probe["session_id"], probe["updated_at"] = (
                now,
                session["session_id"],
                session["updated_at"],
            )
            self.results["api_session"].append((probe["landed"], now - probe["landed"]))
        status, recs = get(self.port, f"/users/{probe['user']}/recommendations")
        if (
            status == 200
            and recs["source"] == "live"
            and recs["session_id"] == probe["session_id"]
            and (recs["generated_at"] or "") >= probe["updated_at"]
        ):
            probe["recs"] = now
            self.results["api_live_recommendations"].append((probe["landed"], now - probe["landed"]))


def api_load_apart(port: int, users: int, rate: float, seconds: float, delay_s: float) -> dict:
    """``api_load`` after ``delay_s``, from a process of its own: its client threads then share no
    interpreter lock with the harness's probe and sampling, whose pauses would count as the API's."""
    time.sleep(delay_s)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(api_load, port, users, rate, seconds).result()


def api_load(port: int, users: int, rate: float, seconds: float, threads: int = 8, seed: int = 5) -> dict:
    """``rate`` requests a second for ``seconds`` (recommendations, sessions, profiles in 3:1:1),
    each for a random user of 1..users, from ``threads`` client threads on a fixed schedule (a
    late request is not dropped: its latency counts from its scheduled time)."""
    rng = random.Random(seed)
    total = int(rate * seconds)
    kinds = ["recommendations?k=10", "recommendations?k=10", "recommendations?k=10", "session", "profile"]
    plan = [(i / rate, f"/users/{rng.randint(1, users)}/{rng.choice(kinds)}") for i in range(total)]
    latencies = np.zeros(total)
    statuses = np.zeros(total, dtype=int)
    started = time.monotonic() + 0.5

    def worker(offset: int) -> None:
        for i in range(offset, total, threads):
            due, path = plan[i]
            wait = started + due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            status, _ = get(port, path)
            latencies[i] = time.monotonic() - (started + max(due, 0))
            statuses[i] = status or 0

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    elapsed = time.monotonic() - started
    ok = np.isin(statuses, (200, 404))
    ms = latencies * 1000
    return {
        "requests": total,
        "achieved_per_s": round(total / elapsed, 1),
        "errors": int((~ok).sum()),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    }
