#!/usr/bin/env bash
# Run a streamrec job through the real spark-submit, with the project's Spark conf, logging,
# Delta jars and lib/ (as --py-files) in place.
#
#   ./spark-submit.sh [spark-submit options] jobs/<job>.py [job options]
#   ./spark-submit.sh --master spark://host:7077 jobs/stream.py --available-now
#
# The driver, and its web UI, bind to SPARK_LOCAL_IP (127.0.0.1 unless you set it); on a
# multi-host cluster set SPARK_LOCAL_IP to an address the executors can reach.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${STREAMREC_VENV:-$ROOT/.venv}"

usage() {
  echo "usage: $0 [spark-submit options] jobs/<job>.py [job options]" >&2
  exit 2
}
if [[ ! -x "$VENV/bin/spark-submit" ]]; then
  echo "spark-submit not found in $VENV: run 'make setup' first" >&2
  exit 2
fi

submit_opts=()
while [[ $# -gt 0 && "$1" != *.py ]]; do
  submit_opts+=("$1")
  shift
done
[[ $# -gt 0 ]] || usage
job="$1"
shift

master="local[*]"  # spark-submit's own default
for ((i = 0; i < ${#submit_opts[@]}; i++)); do
  case "${submit_opts[i]}" in
    --master) master="${submit_opts[i + 1]:-}" ;;
    --master=*) master="${submit_opts[i]#--master=}" ;;
  esac
done
# The Delta and Kafka connector jars; the driver's class path (the Hive metastore's JDBC driver,
# and on a local master streamrec's jar) and the settings that go with it (lib.core.spark).
mapfile -t jar_settings < <(cd "$ROOT" && "$VENV/bin/python" - "$master" <<'PY'
import sys
from lib.core.spark import driver_settings, engine_jar_paths
jars, settings = engine_jar_paths(), driver_settings(sys.argv[1])
print(",".join(map(str, jars)))
for key, value in settings.items():
    print(f"{key}={value}")
PY
)
[[ ${#jar_settings[@]} -gt 0 ]] || exit 2
jars="${jar_settings[0]}"
driver_conf=()
for setting in "${jar_settings[@]:1}"; do
  driver_conf+=(--conf "$setting")
done
# lib/ ships to the executors as a zip named for its content: built only when lib/ changed, and
# written under a temporary name then renamed, so jobs started together never see half a zip.
libzip="$(cd "$ROOT" && "$VENV/bin/python" - <<'PY'
import hashlib, os, pathlib, tempfile, zipfile
sources = sorted(pathlib.Path("lib").rglob("*.py"))
digest = hashlib.sha256()
for path in sources:
    digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
cache = pathlib.Path(".cache").resolve()
cache.mkdir(exist_ok=True)
target = cache / f"lib-{digest.hexdigest()[:16]}.zip"
if not target.is_file():
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".lib-", suffix=".zip")
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sources:
            zf.write(path)
    os.replace(tmp, target)
print(target)
PY
)"

umask 077  # tables, checkpoints and logs are for their owner only
export STREAMREC_HOME="$ROOT"  # lib/ runs from a zip under spark-submit: where conf/ is
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$VENV/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$VENV/bin/python}"
log4j="-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties"

# spark-submit runs in a session of its own, so a Ctrl-C typed in the terminal does not reach the
# JVM (it would shut Spark down under the running batch): SIGINT/SIGTERM are forwarded to the
# Python driver only, which stops between micro-batches and exits, and the JVM with it.
# Leaving the process group must not let the job outlive this wrapper: the JVM gets SIGKILL when
# the wrapper dies (setpriv --pdeathsig), and the Python driver when the JVM dies (jobs/_bootstrap.py),
# so a kill -9 of the wrapper or of its process group ends the whole job.
setsid setpriv --pdeathsig KILL "$VENV/bin/spark-submit" \
  --properties-file "$ROOT/conf/spark-defaults.conf" \
  --jars "$jars" \
  "${driver_conf[@]}" \
  --py-files "$libzip" \
  --conf "spark.executor.extraJavaOptions=$log4j" \
  "${submit_opts[@]+"${submit_opts[@]}"}" \
  "$job" "$@" &
submit_pid=$!
# Where the kernel shares the CPU between sessions first (sched_autogroup), a niceness counts only
# within its session: the one this wrapper runs with (`nice -n 10 ./spark-submit.sh ...`, to leave
# the CPU to an API beside the job) goes to the job's new session as a whole.
niceness="$(nice)"
if [[ "$niceness" != 0 && -e /proc/$submit_pid/autogroup ]]; then
  for _ in $(seq 50); do  # once the job has its own session (setsid runs in the child)
    if [[ "$(cat /proc/$submit_pid/autogroup 2>/dev/null)" != "$(cat /proc/$$/autogroup)" ]]; then
      echo "$niceness" > "/proc/$submit_pid/autogroup" 2>/dev/null || true
      break
    fi
    sleep 0.02
  done
fi
forward() {
  local drivers
  drivers="$(pgrep -P "$submit_pid" || true)"
  if [[ -n "$drivers" ]]; then
    kill -TERM $drivers 2>/dev/null || true
  else
    kill -TERM "$submit_pid" 2>/dev/null || true
  fi
}
trap forward INT TERM
status=0
while kill -0 "$submit_pid" 2>/dev/null; do
  wait "$submit_pid" && status=0 || status=$?
done
exit "$status"
