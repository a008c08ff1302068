#!/usr/bin/env bash
# The Spark Thrift server (HiveServer2, JDBC/ODBC) over the tables named in the config's metastore.
#   scripts/sql-server.sh start [--port 10000] [--config PATH]   returns once it accepts connections
#   scripts/sql-server.sh stop [--config PATH]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STREAMREC_VENV:-$ROOT/.venv}"
[[ -x "$VENV/bin/python" ]] || { echo "run 'make setup' first" >&2; exit 2; }
umask 077
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/python" "$ROOT/scripts/sql_server.py" "$@"
