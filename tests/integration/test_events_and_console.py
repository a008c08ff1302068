"""The console and events over HTTP against the real stream job and API on 127.0.0.1 (one of
each for the module, a model in place):

- headless Chromium (Debian's, driven by Selenium) opens the console, shows a user, clicks a
  recommended item, and sees the click in the session and the list re-ranked without it;
- 10,000 events in 50 requests (from several clients at once) each reach ``enriched_events``
  exactly once, checked with the verifier; a request with one bad event writes nothing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from lib.ingest.generator import HEADER, ManifestRow
from lib.lake.batch import train_and_publish
from lib.lake.verify import read_manifest, verify
from lib.stream.query import run_available_now
from tests.helpers import (
    ApiServer,
    activity_writer,
    batches_committed,
    generated_purchases,
    make_config,
    start_stream_job,
    wait_for_batches,
    write_config_file,
    write_manifest,
    write_purchases,
)

REQUESTS, PER_REQUEST = 50, 200
T0 = datetime(2024, 5, 1, 9, 0, 0)


def request_events(index: int) -> list[dict]:
    """Request ``index``'s events: distinct (user, item, time) triples, so each can be found in
    the file it landed in."""
    kinds = ("view", "click", "add_to_cart")
    return [
        {
            "user_id": 1 + (index * PER_REQUEST + n) % 97,
            "item_id": 1 + n,
            "event_type": kinds[n % 3],
            "timestamp": (T0 + timedelta(seconds=index * PER_REQUEST + n)).strftime("%Y-%m-%d %H:%M:%S"),
        }
        for n in range(PER_REQUEST)
    ]


def manifest_of(landed: dict[str, list[dict]]) -> list[ManifestRow]:
    """The ground truth: each posted event at its line of the file the API said it went to."""
    rows = []
    for path, events in landed.items():
        lines = Path(path).read_text().splitlines()
        assert lines[0] == HEADER
        position = {line: number for number, line in enumerate(lines, 1)}
        for e in events:
            line = f"{e['user_id']},{e['item_id']},{e['event_type']},{e['timestamp']}"
            assert line in position, f"{line} is not in {path}"
            rows.append(
                ManifestRow(
                    Path(path).name,
                    position[line],
                    line,
                    None,
                    e["user_id"],
                    e["item_id"],
                    e["event_type"],
                    e["timestamp"],
                )
            )
    return rows


@pytest.fixture(scope="module")
def live(spark, tmp_path_factory):
    """A lake with a model, then the stream job and the API running over it."""
    root = tmp_path_factory.mktemp("console")
    cfg = make_config(root, "recommend.top_k=5")
    write_purchases(cfg.paths.purchases, generated_purchases(users=97, items=200, count=300))
    seed = activity_writer(cfg, users=40, items=200)
    seed.write_file(600)
    run_available_now(spark, cfg)
    train_and_publish(spark, cfg)
    toml = write_config_file(cfg, root / "pipeline.toml", "[stream]\nmax_files_per_trigger = 1000\n")
    log = root / "stream.log"
    job = start_stream_job(toml, log)
    try:
        with ApiServer(cfg, root) as api:
            # The job's own first batch (its JVM warm): a file after the seed's run.
            warm = seed.write_file(50)
            wait_for_batches(cfg, job, batches_committed(cfg), log)
            # The job loads the model beside its first batches: the console test needs it in
            # memory, which a live list for a user of that file shows.
            warm_users = {r.user_id for r in seed.manifest if r.file == warm.name and r.expected_reason is None}
            deadline = time.monotonic() + 300
            while not any(source_of(api, user) == "live" for user in warm_users):
                assert job.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(1)
            # Files of events other tests of the module sent (the verifier expects their rows too).
            yield cfg, api, job, log, seed.manifest, []
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=60)


def source_of(api: ApiServer, user: int) -> str | None:
    """Where the user's served recommendations come from ("batch" or "live"), None without any."""
    status, body = api.get(f"/users/{user}/recommendations")
    return body["source"] if status == 200 else None


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "no Chromium here: `make browser` (scripts/install_browser.sh) installs Debian's chromium and "
            "chromium-driver, which needs apt-get and root"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_console_shows_a_click_in_the_session_and_the_list_within_10_s(live):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cfg, api, job, log, _, other_files = live
    user = next(u for u in range(1, 41) if source_of(api, u) == "batch")
    browser = chromium()
    try:
        browser.get(f"http://127.0.0.1:{api.process.port}/")
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "last-batch").text.isdigit())
        browser.find_element(By.ID, "user-id").send_keys(str(user))
        browser.find_element(By.CSS_SELECTOR, "#user-form button").click()
        WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#recommendations button.item"))
        assert browser.find_element(By.ID, "rec-source").text == "batch"
        first = browser.find_elements(By.CSS_SELECTOR, "#recommendations button.item")[0]
        clicked = first.get_attribute("data-item")
        sent = time.monotonic()
        first.click()
        WebDriverWait(browser, 5).until(lambda b: "Sent a click" in b.find_element(By.ID, "user-message").text)
        other_files.append(re.search(r"\(to (.+)\)\.$", browser.find_element(By.ID, "user-message").text).group(1))

        def click_served(b) -> bool:
            rows = [r.text.split() for r in b.find_elements(By.CSS_SELECTOR, "#session-events tr")]
            shown = [e.get_attribute("data-item") for e in b.find_elements(By.CSS_SELECTOR, "#recommendations button")]
            clicked_row = any(r[-2:] == [clicked, "click"] for r in rows)
            relisted = b.find_element(By.ID, "rec-source").text == "live" and shown and clicked not in shown
            return clicked_row and relisted

        try:
            WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,)).until(click_served)
        except TimeoutException:
            shown = {
                "source": browser.find_element(By.ID, "rec-source").text,
                "items": [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#recommendations button")],
                "session": [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#session-events tr")],
                "message": browser.find_element(By.ID, "user-message").text,
                "status": browser.find_element(By.ID, "status").text,
            }
            raise AssertionError(f"user {user} clicked item {clicked}; 10 s later the console shows {shown}") from None
        served_s = time.monotonic() - sent
    finally:
        browser.quit()
    print(f"click to re-ranked list in the console: {served_s:.2f} s")


def test_posted_events_reach_enriched_events_exactly_once_while_the_stream_runs(spark, live):
    cfg, api, job, log, seed_manifest, other_files = live
    first = {"item_id": 7, "event_type": "click", "timestamp": "2024-05-01T10:59:00+02:00"}
    status, body = api.post("/users/5/events", first)
    assert status == 202 and body["accepted"] == 1, body
    first_file = body["destination"]

    bad = request_events(999)
    bad[150]["event_type"] = "purchase"
    files_before = set(os.listdir(cfg.paths.events_dir))
    status, body = api.post("/events", bad)
    assert status == 422 and body["reason"] == "unknown_event_type" and body["index"] == 150
    assert api.post("/events", b"{not json")[0] == 422
    assert set(os.listdir(cfg.paths.events_dir)) == files_before  # nothing of either request

    batches_before = batches_committed(cfg)
    with ThreadPoolExecutor(5) as clients:
        answers = list(clients.map(lambda i: api.post("/events", request_events(i)), range(REQUESTS)))
    assert all(status == 202 and body["accepted"] == PER_REQUEST for status, body in answers), answers[:3]
    landed: dict[str, list[dict]] = {first_file: []}
    for index, (_, body) in enumerate(answers):
        landed.setdefault(body["destination"], []).extend(request_events(index))
    # Requests that arrive together share a file: fewer files than requests.
    assert len(landed) - 1 < REQUESTS

    wait_for_batches(cfg, job, batches_before, log)
    os.killpg(job.pid, signal.SIGTERM)
    assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
    run_available_now(spark, cfg)  # whatever the stream had not taken yet, and every table complete

    rows = seed_manifest + manifest_of(landed)
    for path in other_files:
        for number, line in enumerate(Path(path).read_text().splitlines()[1:], 2):
            user, item, kind, stamp = line.split(",")
            rows.append(ManifestRow(Path(path).name, number, line, None, int(user), int(item), kind, stamp[:19]))
    first_line = "5,7,click,2024-05-01 08:59:00.000000"  # the offset converted to UTC
    assert Path(first_file).read_text().splitlines()[1] == first_line
    rows.append(ManifestRow(Path(first_file).name, 2, first_line, None, 5, 7, "click", "2024-05-01 08:59:00"))
    manifest = write_manifest(rows, Path(cfg.paths.lake).parent / "manifest.jsonl")
    checks = verify(spark, cfg, read_manifest(spark, manifest))
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert api.get("/users/5/session")[1]["num_events"] >= 1
