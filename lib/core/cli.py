"""Shared command-line plumbing for jobs: --config / --set, logging."""

from __future__ import annotations

import argparse
import logging
import sys

from lib.core.config import Config, ConfigError, load_config


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="pipeline TOML file (default: conf/pipeline.toml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set stream.max_files_per_trigger=4 (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config named by the arguments; exit 2 with the reason when it is invalid."""
    try:
        return load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
