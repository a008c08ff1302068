#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft) on 127.0.0.1, from the jars `make setup` fetched.
#   scripts/kafka.sh start [--port N] [--dir PATH]   # waits until it answers; prints bootstrap=127.0.0.1:N
#   scripts/kafka.sh stop [--dir PATH]
#   scripts/kafka.sh status [--dir PATH]
#   scripts/kafka.sh topic NAME [--partitions N] [--bootstrap HOST:PORT] [--dir PATH]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
exec "$VENV/bin/python" "$ROOT/scripts/kafka_broker.py" "$@"
