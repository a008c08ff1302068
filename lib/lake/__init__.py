"""The Delta lake: exactly-once sinks, per-batch state, the checkpoint's lock and config
guard, table names in the metastore, batch jobs over the lake, the verifier and reports."""
