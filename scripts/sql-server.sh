#!/usr/bin/env bash
# The Spark Thrift server (HiveServer2, JDBC/ODBC) over the tables named in the config's metastore.
#   scripts/sql-server.sh start [--port 10000] [--config PATH]   returns once it accepts connections
#   scripts/sql-server.sh stop [--config PATH]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
exec "$VENV/bin/python" "$ROOT/scripts/sql_server.py" "$@"
