"""Start, stop or show the project's single-node Kafka broker, or create a topic on it.

Usage (through scripts/kafka.sh):
    scripts/kafka.sh start [--port N] [--dir PATH]
    scripts/kafka.sh stop|status [--dir PATH]
    scripts/kafka.sh topic NAME [--partitions N] [--bootstrap HOST:PORT] [--dir PATH]
"""

from __future__ import annotations

import argparse
import sys

from lib.ingest import kafka

DEFAULT_DIR = "data/kafka"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status", "topic"))
    parser.add_argument("topic", nargs="?", help="topic name (for `topic`)")
    parser.add_argument(
        "--dir", default=DEFAULT_DIR, help=f"the broker's folder: data, log, ports (default {DEFAULT_DIR})"
    )
    parser.add_argument("--port", type=int, help="listener port on 127.0.0.1 (default 9092, or the folder's last one)")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--bootstrap", help="broker to create the topic on (default: the broker of --dir)")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            broker = kafka.start_broker(args.dir, args.port)
            print(f"running (pid {broker.pid}), log {broker.folder / 'broker.log'}")
            print(f"bootstrap={broker.bootstrap}")
        elif args.action == "stop":
            print("stopped" if kafka.stop_broker(args.dir) else "not running")
        elif args.action == "status":
            broker = kafka.running_broker(args.dir)
            if broker is None:
                print(f"not running ({args.dir})")
                return 3
            print(f"running (pid {broker.pid})")
            print(f"bootstrap={broker.bootstrap}")
        else:
            if not args.topic:
                parser.error("topic needs a NAME")
            bootstrap = args.bootstrap or getattr(kafka.running_broker(args.dir), "bootstrap", None)
            if bootstrap is None:
                print(f"no broker runs for {args.dir}: start it, or pass --bootstrap HOST:PORT", file=sys.stderr)
                return 3
            created = kafka.create_topic(bootstrap, args.topic, args.partitions)
            print(f"{'created' if created else 'exists'}: {args.topic} on {bootstrap}")
    except kafka.KafkaError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
