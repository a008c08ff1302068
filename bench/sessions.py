"""Next-item prediction through the real engine: the session-based protocol of session-rec
(Ludewig & Jannach, rn5l/session-rec, ``evaluation/evaluation.py``), with streamrec as the model.

Input: two tab-separated files with a header ``SessionId, ItemId, Time`` (unix seconds), a
training and a test split, as session-rec prepares them (its YooChoose sample:
``data/rsc15/prepared/yoochoose-clicks-100k_train_full.txt`` and ``..._test.txt``; clone
https://github.com/rn5l/session-rec and pass ``--data <clone>/data/rsc15/prepared``).

1. Every training click becomes a ``click`` event of a user of its own (one user per session;
   a gap within a session longer than ``sessions.gap`` is shortened to just under it so the
   session stays one), written as CSV files in time order; ``jobs/stream.py --available-now``
   takes them into the lake, ``jobs/train.py`` trains on it.
2. The stream then runs as a service with the HTTP API (``jobs/serve.py``). The test sessions
   are replayed step by step: step i is one file with the i-th event of every test session
   that has an event after it (event i at a fixed minute after event i-1). When the API serves
   each such user a session of i+1 events and live recommendations of that micro-batch, the
   list ``GET /users/{id}/recommendations?k=20`` is scored against the session's event i+1.
3. HitRate@k (the next item is in the list) and MRR@k (1 / its rank, 0 beyond k) are averaged
   over all predictions, for k = 10 and 20, beside two baselines computed here on the same
   predictions: session popularity (items by their count in the session so far, then global
   popularity: session-rec's SPOP) and global popularity.

Usage: .venv/bin/python bench/sessions.py --data DIR [--prefix yoochoose-clicks-100k]
           [--sessions N] [--root data/bench-sessions] [--set section.key=value ...]
       (or --train FILE --test FILE). ``--sessions 100`` takes the first 99 test sessions,
       as session-rec's ``sessions_test: 100`` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchmark import Workdir  # noqa: E402
from bench.harness import metastore_of  # noqa: E402
from bench.serving import ApiProcess, get  # noqa: E402
from lib.core.config import load_config  # noqa: E402
from lib.core.metastore import stop_server  # noqa: E402
from lib.core.processes import free_port  # noqa: E402
from lib.core.schemas import CLICK  # noqa: E402
from lib.ingest.generator import HEADER, format_event, write_atomically  # noqa: E402

log = logging.getLogger("bench.sessions")

CUTOFFS = (10, 20)
TEST_STEP = timedelta(minutes=1)
TRAIN_FILE_ROWS = 20_000
STEP_TIMEOUT_S = 600


def read_split(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", usecols=["SessionId", "ItemId", "Time"])
    return frame.sort_values(["SessionId", "Time"], kind="stable").reset_index(drop=True)


class Ids:
    """Dense positive ints for the dataset's session and item ids (which may be any value)."""

    def __init__(self, train: pd.DataFrame, test: pd.DataFrame):
        self.items = pd.Index(pd.unique(pd.concat([train.ItemId, test.ItemId])))
        self.train_users = pd.Index(pd.unique(train.SessionId))
        self.test_users = pd.Index(pd.unique(test.SessionId))

    def item(self, ids: pd.Series) -> np.ndarray:
        return self.items.get_indexer(ids) + 1

    def train_user(self, ids: pd.Series) -> np.ndarray:
        return self.train_users.get_indexer(ids) + 1

    def test_user(self, ids: pd.Series) -> np.ndarray:
        return self.test_users.get_indexer(ids) + 1 + len(self.train_users)


def land(incoming: Path, name: str, users, items, times) -> None:
    """One activity file of clicks, renamed into the watched folder as producers should."""
    lines = [format_event((int(u), int(i), CLICK, t)) for u, i, t in zip(users, items, times)]
    write_atomically(incoming, name, [HEADER, *lines])


def training_times(train: pd.DataFrame, max_gap_s: float) -> pd.Series:
    """Event times in whole seconds, each gap within a session kept between 1 s and ``max_gap_s``
    (so the stream neither splits a session nor reorders two events of one second)."""
    gaps = train.groupby("SessionId").Time.diff().clip(lower=1, upper=max_gap_s).fillna(0).round()
    start = train.groupby("SessionId").Time.transform("min").round()
    seconds = start + gaps.groupby(train.SessionId).cumsum()
    return pd.to_datetime(seconds, unit="s", utc=True)


def write_training_files(run: Workdir, train: pd.DataFrame, ids: Ids, max_gap_s: float) -> datetime:
    """Training events as CSV files in time order; returns the latest event time."""
    times = training_times(train, max_gap_s)
    order = np.argsort(times.to_numpy(), kind="stable")
    users, items = ids.train_user(train.SessionId)[order], ids.item(train.ItemId)[order]
    ordered_times = [t.to_pydatetime() for t in times.iloc[order]]
    for number, start in enumerate(range(0, len(order), TRAIN_FILE_ROWS)):
        end = start + TRAIN_FILE_ROWS
        land(run.incoming, f"train-{number:05d}.csv", users[start:end], items[start:end], ordered_times[start:end])
    return ordered_times[-1]


def served_list(port: int, user: int, events: int) -> list[int] | None:
    """The live recommendation list once the API serves ``user`` a session of ``events`` events
    and live recommendations ranked through its micro-batch or a later one (generated at or after
    the session's update); None until then."""
    status, session = get(port, f"/users/{user}/session")
    if status != 200 or session.get("num_events") != events:
        return None
    status, recs = get(port, f"/users/{user}/recommendations?k={max(CUTOFFS)}")
    if (
        status != 200
        or recs.get("source") != "live"
        or recs.get("session_id") != session.get("session_id")
        or (recs.get("generated_at") or "") < session.get("updated_at")
    ):
        return None
    return [entry["item_id"] for entry in recs["items"]]


def next_batch(port: int, after: int | None, deadline: float, run: Workdir) -> int:
    """The id of the first micro-batch after ``after`` that the API reports."""
    while True:
        batch = (get(port, "/health")[1] or {}).get("last_batch_id")
        if batch is not None and (after is None or batch > after):
            return batch
        if time.monotonic() > deadline:
            raise RuntimeError(f"no micro-batch after {after} within {STEP_TIMEOUT_S} s; see {run.log}")
        time.sleep(0.2)


def replay_test(run: Workdir, port: int, test: pd.DataFrame, ids: Ids, start: datetime) -> list[tuple[list[int], int]]:
    """(served list, next item) of every prediction, in dense ids."""
    sessions = [
        (int(ids.test_user(pd.Series([session]))[0]), ids.item(group.ItemId))
        for session, group in test.groupby("SessionId", sort=False)
    ]
    predictions = []
    seen_batch = (get(port, "/health")[1] or {}).get("last_batch_id")
    steps = max(len(items) for _, items in sessions) - 1
    for step in range(steps):
        active = [(user, items) for user, items in sessions if len(items) > step + 1]
        moment = start + step * TEST_STEP
        land(
            run.incoming,
            f"test-{step:05d}.csv",
            [u for u, _ in active],
            [items[step] for _, items in active],
            [moment] * len(active),
        )
        began, waiting = time.monotonic(), dict(active)
        # Users are asked once the step's micro-batch is in, so the probe leaves the CPU to the
        # stream; their live lists follow it (the ranking runs beside the batches), asked for
        # twice a second.
        seen_batch = next_batch(port, seen_batch, began + STEP_TIMEOUT_S, run)
        while waiting:
            for user in list(waiting):
                served = served_list(port, user, step + 1)
                if served is not None:
                    predictions.append((served, int(waiting.pop(user)[step + 1])))
            if waiting and time.monotonic() > began + STEP_TIMEOUT_S:
                raise RuntimeError(
                    f"{len(waiting)} users had no live list {STEP_TIMEOUT_S} s after step {step}; see {run.log}"
                )
            time.sleep(0.5 if waiting else 0)
        log.info("step %d/%d: %d predictions in %.1f s", step + 1, steps, len(active), time.monotonic() - began)
    return predictions


def baseline_lists(train: pd.DataFrame, test: pd.DataFrame, ids: Ids) -> dict[str, list[tuple[list[int], int]]]:
    """Session popularity and global popularity on the same predictions."""
    counts = pd.Series(ids.item(train.ItemId)).value_counts()
    popular = counts.sort_values(ascending=False, kind="stable").index.to_numpy()[: max(CUTOFFS) * 4]
    support = (counts / (counts + 1)).to_dict()
    by_global, by_session = [], []
    for _, group in test.groupby("SessionId", sort=False):
        items = ids.item(group.ItemId)
        for step in range(len(items) - 1):
            target = int(items[step + 1])
            by_global.append((list(popular[: max(CUTOFFS)]), target))
            seen = pd.Series(items[: step + 1]).value_counts()
            candidates = set(seen.index) | set(popular)
            score = {i: seen.get(i, 0) + support.get(i, 0.0) for i in candidates}
            ranked = sorted(candidates, key=lambda i: (-score[i], i))[: max(CUTOFFS)]
            by_session.append((ranked, target))
    return {"session popularity": by_session, "global popularity": by_global}


def accuracy(predictions: list[tuple[list[int], int]]) -> dict[str, float]:
    result = {}
    for k in CUTOFFS:
        ranks = [lst[:k].index(target) + 1 if target in lst[:k] else None for lst, target in predictions]
        result[f"HR@{k}"] = sum(r is not None for r in ranks) / len(ranks)
        result[f"MRR@{k}"] = sum(1.0 / r for r in ranks if r is not None) / len(ranks)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="folder with <prefix>_train_full.txt and <prefix>_test.txt")
    parser.add_argument("--prefix", default="yoochoose-clicks-100k")
    parser.add_argument("--train", type=Path, help="training split (default: from --data and --prefix)")
    parser.add_argument("--test", type=Path, help="test split (default: from --data and --prefix)")
    parser.add_argument("--sessions", type=int, help="keep the first N-1 test sessions (session-rec's sessions_test)")
    parser.add_argument("--root", type=Path, default=ROOT / "data" / "bench-sessions")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    train_path = args.train or (args.data / f"{args.prefix}_train_full.txt" if args.data else None)
    test_path = args.test or (args.data / f"{args.prefix}_test.txt" if args.data else None)
    if train_path is None or test_path is None:
        parser.error("give --data DIR (session-rec's prepared folder) or --train FILE and --test FILE")
    for path in (train_path, test_path):
        if not path.is_file():
            parser.error(f"{path} does not exist (clone https://github.com/rn5l/session-rec for its YooChoose sample)")

    train, test = read_split(train_path), read_split(test_path)
    if args.sessions:
        keep = pd.unique(pd.read_csv(test_path, sep="\t", usecols=["SessionId"]).SessionId)[: args.sessions - 1]
        test = test[test.SessionId.isin(keep)]
    test = test[test.groupby("SessionId").SessionId.transform("size") > 1]
    ids = Ids(train, test)

    extra = "[recommend]\ntop_k = 20\nlive_repeats = true\n"
    run = Workdir(args.root, "run", stream={"max_files_per_trigger": 20}, extra_toml=extra)
    run.incoming.mkdir(parents=True, exist_ok=True)
    settings = [f"--set={o}" for o in args.set]
    gap_s = load_config(run.config, args.set).sessions.gap_seconds
    timings = {}
    api = stream = None
    try:
        last = write_training_files(run, train, ids, gap_s - 60)
        timings["train stream s"] = run.job("jobs/stream.py", "--available-now", *settings)
        timings["train model s"] = run.job("jobs/train.py", *settings)
        port = free_port()
        api = ApiProcess(run.config, port, run.dir / "api.log")
        stream = run.stream("--set=stream.max_files_per_trigger=1", *settings)
        started = time.monotonic()
        start = (last + timedelta(days=1)).replace(microsecond=0)
        predictions = replay_test(run, port, test, ids, start)
        timings["test replay s"] = time.monotonic() - started
    finally:
        if api is not None:
            api.stop()
        if stream is not None:
            stream.terminate()
            stream.wait(timeout=300)
        stop_server(metastore_of(args.root))

    results = {"streamrec (live, through the API)": accuracy(predictions)}
    results.update({name: accuracy(lists) for name, lists in baseline_lists(train, test, ids).items()})
    header = ["method", *(f"{m}@{k}" for k in CUTOFFS for m in ("HR", "MRR"))]
    print(
        f"\n{len(predictions)} predictions over {test.SessionId.nunique()} test sessions ({test_path.name}); "
        f"training {len(train)} events, {train.SessionId.nunique()} sessions"
    )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, figures in results.items():
        print(f"| {name} | " + " | ".join(f"{figures[f'{m}@{k}']:.3f}" for k in CUTOFFS for m in ("HR", "MRR")) + " |")
    print("timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    (args.root / "results.json").write_text(
        json.dumps({"predictions": len(predictions), "results": results, "timings": timings}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
