#!/usr/bin/env bash
# An interactive pyspark shell with Delta configured and every streamrec table registered by
# name: spark.table("enriched_events"), spark.sql("select * from live_sessions"), ...
#   ./pyspark.sh [--config PATH]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${STREAMREC_VENV:-$ROOT/.venv}"
[[ -x "$VENV/bin/python" ]] || { echo "run 'make setup' first" >&2; exit 2; }
exec "$VENV/bin/python" -i "$ROOT/jobs/shell.py" "$@"
