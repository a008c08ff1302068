#!/usr/bin/env bash
# The Derby network server behind the config's Hive metastore (paths.metastore). Jobs start it
# on demand; it keeps running for the next job until stopped.
#   scripts/metastore.sh start|status|stop [--config PATH]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
exec "$VENV/bin/python" "$ROOT/scripts/metastore.py" "$@"
