"""Fetch the jars setup needs from Maven Central: Delta (matching the installed pyspark and
delta-spark), the Derby network server and client (matching the Derby pyspark ships), Spark's
Kafka connector, and the Kafka broker's jars (in a folder of their own: they run in the broker's
JVM, not on Spark's class path).

Run once by ``make setup``; later runs find them in ``.cache/jars`` and do nothing, so no test
or job ever downloads at run time. Checksums are verified against Maven Central's ``.sha1``.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from lib.core.metastore import derby_maven_coordinates
from lib.core.paths import JARS_DIR, maven_jar
from lib.core.spark import delta_maven_coordinates
from lib.ingest.kafka import BROKER_JARS_DIR, BROKER_MAVEN_COORDINATES, connector_maven_coordinates

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"


def fetch(coordinate: str, target_dir: Path) -> Path:
    group, artifact, version = coordinate.split(":")
    target = maven_jar(target_dir, coordinate)
    if target.is_file():
        return target
    url = f"{MAVEN_CENTRAL}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.jar"
    with urllib.request.urlopen(url, timeout=120) as response:
        payload = response.read()
    with urllib.request.urlopen(url + ".sha1", timeout=60) as response:
        expected_sha1 = response.read().decode().split()[0].strip()
    if hashlib.sha1(payload).hexdigest() != expected_sha1:
        raise SystemExit(f"checksum mismatch for {url}; try again")
    tmp = target.with_suffix(".part")
    tmp.write_bytes(payload)
    tmp.rename(target)
    return target


def main() -> None:
    wanted = [(c, JARS_DIR) for c in [*delta_maven_coordinates(), *derby_maven_coordinates()]]
    wanted += [(c, JARS_DIR) for c in connector_maven_coordinates()]
    wanted += [(c, BROKER_JARS_DIR) for c in BROKER_MAVEN_COORDINATES]
    for coordinate, folder in wanted:
        folder.mkdir(parents=True, exist_ok=True)
        path = fetch(coordinate, folder)
        print(f"{coordinate} -> {path}")


if __name__ == "__main__":
    main()
