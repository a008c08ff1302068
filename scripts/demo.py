"""The demo behind `make demo`: a fresh run of the whole pipeline on the embedded defaults.

1. clears the runtime folders of conf/pipeline.toml (data/stream, data/lake, data/checkpoints,
   data/online, the purchase history), 2. generates the purchase history, 3. runs the generator and the
   stream side by side for --duration seconds (one progress line per micro-batch), 4. drains
   what the stream has not reached yet in one catch-up run, 5. trains the model (batch
   recommendations), 6. starts the HTTP API and streams again for a while, now with live
   recommendations from that model (the live console's address is printed), 7. while it streams,
   sends a click for a user over HTTP and asks the API for that user's recommendations and
   session before and after, as an application would (printing the curl commands), 8. prints the
   report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lib.core.config import STREAM_CHECKPOINT, load_config
from lib.core.metastore import stop_server
from lib.lake.checkpoint import has_processed

ROOT = Path(__file__).resolve().parent.parent

PYTHON = str(ROOT / ".venv" / "bin" / "python")
SUBMIT = str(ROOT / "spark-submit.sh")


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode()}"


def post(url: str, body: str) -> str:
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode()}"


def caught_up(cfg, timeout_s: float = 40.0) -> None:
    """Wait (at most ``timeout_s``) until the stream has committed the batches that read every
    file now in the watched folder (its file source's log and its commit log)."""
    checkpoint = cfg.paths.checkpoint(STREAM_CHECKPOINT)
    files = list(Path(cfg.paths.events_dir).glob("*.csv"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not has_processed(checkpoint, files):
        time.sleep(0.5)


def latest_active_user(base: str) -> int:
    """A user with live recommendations: among the first users of the generator, the first the API
    serves live."""
    for user in range(1, 101):
        if '"source":"live"' in fetch(f"{base}/users/{user}/recommendations?k=1"):
            return user
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of live generation")
    parser.add_argument("--events-per-file", type=int, default=1000)
    parser.add_argument("--files-per-second", type=float, default=0.2)
    args = parser.parse_args()
    cfg = load_config()
    data_dir = ROOT / "data"

    banner("resetting the demo's runtime folders under data/")
    for path in (
        cfg.paths.events_dir,
        cfg.paths.lake,
        cfg.paths.checkpoints,
        cfg.paths.purchases,
        cfg.paths.online_store,
    ):
        target = Path(path)
        if data_dir not in target.parents:
            sys.exit(f"refusing to delete {target}: the demo only clears folders under {data_dir}")
        if target.is_file():
            target.unlink()
        shutil.rmtree(target, ignore_errors=True)

    started = time.monotonic()
    banner("generating the purchase history")
    subprocess.run([PYTHON, "jobs/generate.py", "purchases"], cwd=ROOT, check=True)

    banner(f"stream + generator side by side for {args.duration:.0f} s")
    stream = subprocess.Popen([SUBMIT, "jobs/stream.py", "--run-for", str(args.duration + 30)], cwd=ROOT)
    time.sleep(15)  # let Spark start before files arrive, so the first batches are live
    generator = subprocess.run(
        [
            PYTHON,
            "jobs/generate.py",
            "events",
            "--duration",
            str(args.duration),
            "--events-per-file",
            str(args.events_per_file),
            "--files-per-second",
            str(args.files_per_second),
            "--bad-share",
            "0.01",
        ],
        cwd=ROOT,
    )
    if stream.wait() != 0 or generator.returncode != 0:
        print("the stream or the generator failed; see the log above", file=sys.stderr)
        return 1

    banner("catching up on files the live stream had not reached (one available-now batch)")
    subprocess.run(
        [SUBMIT, "jobs/stream.py", "--available-now", "--set", "stream.max_files_per_trigger=100000"],
        cwd=ROOT,
        check=True,
    )

    banner("training the recommendation model on the lake")
    subprocess.run([SUBMIT, "jobs/train.py"], cwd=ROOT, check=True)

    base = f"http://{cfg.serve.host}:{cfg.serve.port}"
    banner(f"starting the HTTP API on {base} (jobs/serve.py, no Spark); the live console: open {base}/")
    api = subprocess.Popen([PYTHON, "jobs/serve.py"], cwd=ROOT)

    banner("streaming again: live recommendations re-ranked from each session, served as they are computed")
    stream = subprocess.Popen([SUBMIT, "jobs/stream.py", "--run-for", "50"], cwd=ROOT)
    time.sleep(15)
    generator = subprocess.run(
        [
            PYTHON,
            "jobs/generate.py",
            "events",
            "--duration",
            "20",
            "--events-per-file",
            str(args.events_per_file),
            "--files-per-second",
            str(args.files_per_second),
            "--start",
            "2024-03-01T00:00:00",
        ],
        cwd=ROOT,
    )
    if generator.returncode == 0 and stream.poll() is None:
        banner("a click sent over HTTP while the stream runs, as an application would")
        # The generator's clock is not the wall clock: the click happens at the stream's latest event
        # once it has processed the generated files (stamped now, it would move the watermark years
        # ahead and close every session; stamped before the files still to process, it is late).
        caught_up(cfg)
        try:
            latest = json.loads(fetch(f"{base}/stream?minutes=1")).get("latest_event_at")
        except ValueError:  # an error status
            latest = None
        user = latest_active_user(base)
        before = json.loads(fetch(f"{base}/users/{user}/recommendations?k=3"))
        item = before["items"][0]["item_id"] if before.get("items") else 1
        click = {"item_id": item, "event_type": "click"}
        if latest:
            click["timestamp"] = latest
        click = json.dumps(click)
        print(f"$ curl '{base}/users/{user}/recommendations?k=3'\n{json.dumps(before)}", flush=True)
        print(f"$ curl -X POST '{base}/users/{user}/events' -d '{click}'\n{post(f'{base}/users/{user}/events', click)}")
        time.sleep(4)
        for path in (f"/users/{user}/recommendations?k=3", f"/users/{user}/events", "/health"):
            print(f"$ curl '{base}{path}'\n{fetch(base + path)}", flush=True)
    if stream.wait() != 0 or generator.returncode != 0:
        api.terminate()
        print("the stream or the generator failed; see the log above", file=sys.stderr)
        return 1
    api.terminate()
    api.wait()

    banner("what the pipeline produced")
    subprocess.run([SUBMIT, "jobs/report.py", "--log-level", "WARNING"], cwd=ROOT, check=True)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s", flush=True)
    print('every table by name: ./pyspark.sh, then spark.table("streamrec.enriched_events").show()', flush=True)
    print(f"the live console: make serve, then open {base}/ (and stream with make demo or jobs/stream.py)", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        # The jobs started the metastore's server for the next job; the demo leaves nothing running.
        stop_server(load_config().paths.metastore)
