"""Lets a job run as ``python jobs/x.py`` from a checkout: puts the project root on sys.path.

Under spark-submit, ``lib`` arrives through ``--py-files`` and the path part is a no-op.
"""
import os
import sys
from pathlib import Path

# Whatever a job creates (input files, tables, checkpoints) is for its owner only.
os.umask(0o077)

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
