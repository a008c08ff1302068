"""The HTTP API: each user's live session, recommendations and profile from the online store.

Usage: .venv/bin/python jobs/serve.py [--config PATH] [--set serve.port=N]   (or: make serve)

Needs no Spark: it reads the store (paths.online_store) that jobs/stream.py writes, and hands
events POSTed to it to the stream's source (a CSV file in paths.events_dir, or Kafka). Then e.g.
  curl http://127.0.0.1:8000/users/42/recommendations?k=5
  curl -X POST http://127.0.0.1:8000/users/42/events -d '{"item_id": 7, "event_type": "click"}'
"""

import logging
import sys
from functools import partial

import _bootstrap  # noqa: F401
import uvicorn

from lib.core.cli import base_parser, config_from_args, setup_logging
from lib.serve.api import create_app
from lib.serve.event_intake import event_sink
from lib.serve.online_store import SQLiteStore

log = logging.getLogger("serve")


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    intake = event_sink(cfg)
    app = create_app(partial(SQLiteStore, cfg.paths.online_store, readonly=True), cfg.recommend.top_k, intake)
    log.info(
        "serving %s on http://%s:%d; events sent to it go to %s",
        cfg.paths.online_store,
        cfg.serve.host,
        cfg.serve.port,
        intake.destination,
    )
    # One worker: a request is a key lookup in SQLite; uvicorn stops cleanly on SIGINT/SIGTERM.
    uvicorn.run(app, host=cfg.serve.host, port=cfg.serve.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
