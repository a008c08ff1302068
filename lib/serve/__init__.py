"""Serving, with no Spark: the online store (SQLite), rows as documents, the HTTP API."""
