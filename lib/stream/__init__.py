"""The streaming application: the query and its foreachBatch orchestrator (``query``), and
the steps of one micro-batch (``steps``)."""
