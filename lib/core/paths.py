"""Where the project's own files are (``conf/``, ``.cache/``): the checkout that runs the job.

Under spark-submit, ``lib`` is imported from the zip shipped with ``--py-files``, so its
``__file__`` points into that zip; ``spark-submit.sh`` exports ``STREAMREC_HOME`` for that case.
"""

import os
from collections.abc import Iterable
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("STREAMREC_HOME") or Path(__file__).resolve().parents[2])
# Jars setup fetched from Maven Central (scripts/fetch_jars.py): Delta, Derby, Kafka.
JARS_DIR = Path(os.environ.get("STREAMREC_JARS_DIR", PROJECT_ROOT / ".cache" / "jars"))
# streamrec's own jar, built from jvm/src by setup (scripts/build_jvm.py).
JVM_JAR = PROJECT_ROOT / ".cache" / "jvm" / "streamrec.jar"
# The local driver's class-data-sharing archive of the classes a job loads, dumped by setup
# (scripts/build_class_archive.py).
CLASS_ARCHIVE = PROJECT_ROOT / ".cache" / "jvm" / "spark-classes.jsa"


def maven_jar(folder: Path, coordinate: str) -> Path:
    """Where setup puts the jar of ``group:artifact:version`` in ``folder``."""
    _group, artifact, version = coordinate.split(":")
    return folder / f"{artifact}-{version}.jar"


def fetched_jars(paths: Iterable[Path], what: str) -> list[Path]:
    """``paths``, each a jar setup fetched; raises with the fix when one is missing."""
    paths = list(paths)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:3])) + (" ..." if len(missing) > 3 else "")
        raise FileNotFoundError(
            f"{what} not found: {shown}. Run `make setup` (or `python scripts/fetch_jars.py`) once to fetch "
            "them from Maven Central."
        )
    return paths
