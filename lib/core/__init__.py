"""The ground floor: typed config, project paths, table schemas and column names, the Spark
session, the file system, the jobs' command line, server processes and the metastore server."""
