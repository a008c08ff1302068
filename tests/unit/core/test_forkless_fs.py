"""streamrec's local Hadoop file system (jvm/src, ``lib.core.spark.FORKLESS_LOCAL_FS``) against
Hadoop's own, on the same real files: the session uses it, and it answers as Hadoop does. A
local driver's other settings: the class archive setup dumped, mapped by the session's JVM."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from py4j.protocol import Py4JJavaError

from lib.core.paths import CLASS_ARCHIVE
from lib.core.spark import FORKLESS_LOCAL_FS, driver_settings, is_local


@pytest.fixture(scope="module")
def hadoop(spark):
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    hadoop_raw = jvm.org.apache.hadoop.fs.RawLocalFileSystem()
    hadoop_raw.initialize(jvm.java.net.URI.create("file:///"), conf)
    return jvm, conf, hadoop_raw


def test_the_session_uses_it_for_file_systems_and_file_contexts(spark, hadoop):
    jvm, conf, _ = hadoop
    local = jvm.org.apache.hadoop.fs.FileSystem.getLocal(conf)
    context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(conf)
    assert local.getClass().getName() == FORKLESS_LOCAL_FS["spark.hadoop.fs.file.impl"]
    assert local.getRawFileSystem().getClass().getName() == "streamrec.hadoop.ForklessRawLocalFileSystem"
    assert (
        context.getDefaultFileSystem().getClass().getName()
        == FORKLESS_LOCAL_FS["spark.hadoop.fs.AbstractFileSystem.file.impl"]
    )


def _status(fs, path):
    """What a file status says, or the exception's class when there is none."""
    try:
        s = fs.getFileLinkStatus(path)
    except Py4JJavaError as e:
        return e.java_exception.getClass().getName()
    symlink = s.getSymlink().toString() if s.isSymlink() else None
    return (
        s.getPath().toUri().getPath(),
        s.isDirectory(),
        s.getLen(),
        s.isSymlink(),
        symlink,
        s.getPermission().toShort(),
    )


def test_link_status_is_hadoops_for_files_folders_links_and_missing_paths(hadoop, tmp_path):
    jvm, conf, hadoop_raw = hadoop
    ours = jvm.org.apache.hadoop.fs.FileSystem.getLocal(conf).getRawFileSystem()
    (tmp_path / "file").write_text("12345")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    names = ["file", "folder", "link", "dangling", "missing"]
    for name in names:
        for text in (str(tmp_path / name), (tmp_path / name).as_uri()):
            path = jvm.org.apache.hadoop.fs.Path(text)
            assert _status(ours, path) == _status(hadoop_raw, path), text
    # Not vacuous: the plain path of a link is a link to both, and a missing path is no file.
    assert _status(ours, jvm.org.apache.hadoop.fs.Path(str(tmp_path / "link")))[3] is True
    assert _status(ours, jvm.org.apache.hadoop.fs.Path(str(tmp_path / "missing"))) == "java.io.FileNotFoundException"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755, 0o000, 0o777, 0o1777])
def test_permissions_are_set_as_hadoop_sets_them(hadoop, tmp_path, mode):
    jvm, conf, hadoop_raw = hadoop
    ours = jvm.org.apache.hadoop.fs.FileSystem.getLocal(conf).getRawFileSystem()
    permission = jvm.org.apache.hadoop.fs.permission.FsPermission(mode)
    modes = []
    for fs, name in ((ours, "ours"), (hadoop_raw, "hadoop")):
        (tmp_path / name).mkdir()
        fs.setPermission(jvm.org.apache.hadoop.fs.Path((tmp_path / name).as_uri()), permission)
        modes.append(stat.S_IMODE(os.stat(tmp_path / name).st_mode))
        os.chmod(tmp_path / name, 0o700)  # so that pytest can remove it
    assert modes == [mode, mode]


def test_setting_the_permissions_of_a_missing_file_raises_file_not_found(hadoop, tmp_path):
    jvm, conf, _ = hadoop
    ours = jvm.org.apache.hadoop.fs.FileSystem.getLocal(conf).getRawFileSystem()
    permission = jvm.org.apache.hadoop.fs.permission.FsPermission(0o600)
    with pytest.raises(Py4JJavaError) as raised:
        ours.setPermission(jvm.org.apache.hadoop.fs.Path((tmp_path / "missing").as_uri()), permission)
    assert raised.value.java_exception.getClass().getName() == "java.io.FileNotFoundException"


def test_a_file_written_through_it_has_the_sessions_umask(spark, tmp_path):
    spark.range(3).write.parquet(str(tmp_path / "table"))
    written = [p for p in (tmp_path / "table").iterdir() if p.name.endswith(".parquet")]
    assert written and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in written)


@pytest.mark.parametrize(
    ("master", "local"),
    [
        ("local", True),
        ("local[2]", True),
        ("local[*]", True),
        ("spark://host:7077", False),
        ("yarn", False),
        ("localhost", False),
    ],
)
def test_only_a_local_master_gets_it(master, local):
    settings = driver_settings(master)
    assert is_local(master) is local
    assert ("streamrec.jar" in settings["spark.driver.extraClassPath"]) is local
    assert all((key in settings) is local for key in FORKLESS_LOCAL_FS)
    assert "derbyclient" in settings["spark.driver.extraClassPath"]
    assert "log4j2.configurationFile" in settings["spark.driver.extraJavaOptions"]
    assert ("SharedArchiveFile" in settings["spark.driver.extraJavaOptions"]) is local


def test_a_local_driver_maps_the_class_archive_setup_dumped(spark):
    assert CLASS_ARCHIVE.is_file(), "run `make setup` (scripts/build_class_archive.py dumps it)"
    jvm = spark.sparkContext._gateway.proc.pid
    assert str(CLASS_ARCHIVE) in Path(f"/proc/{jvm}/maps").read_text()
