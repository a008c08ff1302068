#!/usr/bin/env bash
# The Derby network server behind the config's Hive metastore (paths.metastore). Jobs start it
# on demand; it keeps running for the next job until stopped.
#   scripts/metastore.sh start|status|stop [--config PATH]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STREAMREC_VENV:-$ROOT/.venv}"
[[ -x "$VENV/bin/python" ]] || { echo "run 'make setup' first" >&2; exit 2; }
umask 077
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/python" "$ROOT/scripts/metastore.py" "$@"
