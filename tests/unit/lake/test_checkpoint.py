"""What a harness reads off a running stream's checkpoint: how many batches it has committed."""

from lib.lake.checkpoint import batches_committed


def test_batches_committed_follow_the_highest_id_of_the_commit_log(tmp_path):
    assert batches_committed(tmp_path / "none") == 0
    commits = tmp_path / "commits"
    commits.mkdir()
    assert batches_committed(tmp_path) == 0
    for name in ("0", "1", "2", ".2.crc", "3.tmp"):
        (commits / name).write_text("v1\n{}")
    assert batches_committed(tmp_path) == 3
    # Spark purges old entries; the count must not fall with them.
    (commits / "0").unlink()
    (commits / "1").unlink()
    assert batches_committed(str(tmp_path)) == 3
