# Sourced by the scripts/*.sh wrappers: the project's virtualenv and lib/ on the path, owner-only files.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STREAMREC_VENV:-$ROOT/.venv}"
[[ -x "$VENV/bin/python" ]] || { echo "run 'make setup' first" >&2; exit 2; }
umask 077
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
