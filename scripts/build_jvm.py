"""Build streamrec's own jar (``jvm/src``: a local Hadoop file system that forks no process,
``lib.core.spark.FORKLESS_LOCAL_FS``) into ``.cache/jars`` with the JDK's ``javac``, against the
Hadoop classes pyspark ships.

Run by ``make setup`` whenever a source changed; jobs never build at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyspark

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.core.paths import JVM_JAR  # noqa: E402

SOURCES = ROOT / "jvm" / "src"


def main() -> None:
    javac = shutil.which("javac")
    if javac is None:
        raise SystemExit("javac not found: install a JDK 17 (e.g. `apt-get install openjdk-17-jdk-headless`)")
    sources = sorted(str(p) for p in SOURCES.rglob("*.java"))
    hadoop_api = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    if not hadoop_api:
        raise SystemExit("pyspark ships no hadoop-client-api jar: reinstall the venv with `make setup`")
    classpath = str(hadoop_api[-1])
    JVM_JAR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="streamrec-jvm-") as build:
        classes = Path(build) / "classes"
        subprocess.run(
            [javac, "--release", "17", "-Xlint:all", "-Werror", "-cp", classpath, "-d", str(classes), *sources],
            check=True,
        )
        fd, tmp = tempfile.mkstemp(dir=JVM_JAR.parent, prefix=".streamrec-", suffix=".jar")
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as jar:
            jar.writestr(
                "META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nCreated-By: streamrec scripts/build_jvm.py\r\n\r\n"
            )
            for path in sorted(classes.rglob("*.class")):
                jar.write(path, path.relative_to(classes).as_posix())
        os.replace(tmp, JVM_JAR)
    print(f"{len(sources)} sources -> {JVM_JAR}")


if __name__ == "__main__":
    main()
