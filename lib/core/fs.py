"""Driver-side file operations on whatever file system a path names (local, HDFS, s3a, ...),
through Hadoop's FileSystem API in the JVM. Paths are strings throughout."""

from __future__ import annotations

import os

from pyspark.sql import SparkSession


class LocalFS:
    """``HadoopFS``'s reading side on local paths, for tools that read a checkpoint without a
    Spark session (the benchmark's harness)."""

    def list_names(self, folder: str) -> list[str]:
        """Names of the entries of ``folder``; empty when it does not exist."""
        return os.listdir(folder) if os.path.isdir(folder) else []

    def read_text(self, path: str) -> str | None:
        """The file's content as UTF-8 text; None when it does not exist."""
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None


class HadoopFS:
    """Example::

    fs = HadoopFS(spark)
    if not fs.exists("/lake/enriched_events/_delta_log"):
        ...
    """

    def __init__(self, spark: SparkSession):
        self._path = spark._jvm.org.apache.hadoop.fs.Path
        self._io_utils = spark._jvm.org.apache.commons.io.IOUtils
        self._conf = spark._jsc.hadoopConfiguration()

    def _resolve(self, path: str):
        jvm_path = self._path(path)
        return jvm_path, jvm_path.getFileSystem(self._conf)

    def exists(self, path: str) -> bool:
        jvm_path, fs = self._resolve(path)
        return fs.exists(jvm_path)

    def mkdirs(self, path: str) -> None:
        jvm_path, fs = self._resolve(path)
        fs.mkdirs(jvm_path)

    def list_names(self, folder: str) -> list[str]:
        """Names of the entries of ``folder``; empty when it does not exist."""
        jvm_path, fs = self._resolve(folder)
        if not fs.exists(jvm_path):
            return []
        return [status.getPath().getName() for status in fs.listStatus(jvm_path)]

    def delete(self, path: str, recursive: bool = False) -> None:
        jvm_path, fs = self._resolve(path)
        fs.delete(jvm_path, recursive)

    def create_new(self, path: str, text: str) -> bool:
        """Atomically create the file ``path`` holding ``text``; False if it already exists."""
        jvm_path, fs = self._resolve(path)
        if not fs.createNewFile(jvm_path):
            return False
        out = fs.create(jvm_path, True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()
        return True

    def modified_ms(self, path: str) -> int | None:
        """The file's modification time in epoch milliseconds; None when it does not exist."""
        jvm_path, fs = self._resolve(path)
        if not fs.exists(jvm_path):
            return None
        return fs.getFileStatus(jvm_path).getModificationTime()

    def read_text(self, path: str) -> str | None:
        """The file's content as UTF-8 text; None when it does not exist."""
        jvm_path, fs = self._resolve(path)
        if not fs.exists(jvm_path):
            return None
        stream = fs.open(jvm_path)
        try:
            # py4j copies byte arrays, so the JVM reads the whole file into a string.
            return self._io_utils.toString(stream, "UTF-8")
        finally:
            stream.close()
