"""Start, show or stop the Derby network server behind the config's Hive metastore.

Usage (through scripts/metastore.sh): scripts/metastore.sh start|status|stop [--config PATH]
"""

from __future__ import annotations

import argparse
import sys

from lib.core import metastore
from lib.core.cli import config_from_args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("start", "status", "stop"))
    parser.add_argument("--config", help="pipeline TOML file (default: conf/pipeline.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    folder = config_from_args(args).paths.metastore
    if args.action == "stop":
        print("stopped" if metastore.stop_server(folder) else "not running")
        return 0
    server = metastore.ensure_server(folder) if args.action == "start" else metastore.running_server(folder)
    if server is None:
        print(f"not running ({folder})")
        return 3
    print(f"running (pid {server.pid}) for {server.folder}")
    print(f"jdbc={server.jdbc_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
