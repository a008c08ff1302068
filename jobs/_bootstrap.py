"""Process set-up every job shares; imported first by each ``jobs/*.py``.

- Whatever a job creates (input files, tables, checkpoints) is for its owner only.
- Under spark-submit the Python driver is a child of spark-submit's JVM. It asks Linux to
  SIGKILL it when that JVM dies, so a job killed with kill -9 leaves no driver behind holding
  the checkpoint lock (``spark-submit.sh`` ties the JVM to the wrapper the same way).
"""

import ctypes
import os
import signal
import sys

os.umask(0o077)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    parent = os.getppid()
    if parent == 1:  # the JVM is already gone
        sys.exit(1)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return  # not Linux: nothing to tie to
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # the JVM died before the request took effect
        sys.exit(1)


if "PYSPARK_GATEWAY_PORT" in os.environ and sys.platform.startswith("linux"):
    _die_with_parent()
