"""Lets a job run as ``python jobs/x.py`` from a checkout: puts the project root on sys.path.

Under spark-submit, ``lib`` arrives through ``--py-files`` and this is a no-op.
"""
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
