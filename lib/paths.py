"""Where the project's own files are (``conf/``, ``.cache/``): the checkout that runs the job.

Under spark-submit, ``lib`` is imported from the zip shipped with ``--py-files``, so its
``__file__`` points into that zip; ``spark-submit.sh`` exports ``STREAMREC_HOME`` for that case.
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("STREAMREC_HOME") or Path(__file__).resolve().parent.parent)
# Jars setup fetched from Maven Central (scripts/fetch_jars.py): Delta, Derby, Kafka.
JARS_DIR = Path(os.environ.get("STREAMREC_JARS_DIR", PROJECT_ROOT / ".cache" / "jars"))
