"""A benchmark or chaos run's folder: its input, lake, checkpoints, online store and
``pipeline.toml``, and the jobs run on it through ./spark-submit.sh, as a user runs them. Every
run under one root shares that root's metastore (``metastore_of``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from lib.core.config import config_toml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
SUBMIT = str(ROOT / "spark-submit.sh")


# The running stream's niceness: on a machine it shares with the API, the API's requests (a key
# lookup each) go first and Spark takes the CPU left (README, Performance).
STREAM_NICENESS = 10


def metastore_of(root: Path) -> Path:
    """The one metastore every run under ``root`` shares; the harness stops its server at the end."""
    return root / "metastore"


class RunFolder:
    """``<root>/<name>``; the input folder may be another run's (several runs of one input)."""

    def __init__(
        self, root: Path, name: str, incoming: Path | None = None, purchases: Path | None = None, keep: bool = False
    ):
        """:param keep: use the folder as a previous run left it (else it starts empty)."""
        self.root = root
        self.dir = root / name
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.incoming = incoming or self.dir / "incoming"
        self.purchases = purchases or self.dir / "purchases"
        self.lake = self.dir / "lake"
        self.checkpoints = self.dir / "checkpoints"
        self.config = self.dir / "pipeline.toml"

    def write_config(
        self,
        sections: dict[str, dict[str, object]] | None = None,
        extra_toml: str = "",
        lake: Path | None = None,
        checkpoints: Path | None = None,
    ) -> None:
        """``pipeline.toml``: the folder's paths, then ``sections`` and ``extra_toml``. ``lake`` and
        ``checkpoints`` point a second run of the same input elsewhere (its online store is
        next to its lake)."""
        lake = lake or self.lake
        paths = {
            "events_dir": self.incoming,
            "purchases": self.purchases,
            "lake": lake,
            "checkpoints": checkpoints or self.checkpoints,
            "online_store": f"{lake}-online.sqlite",
            "metastore": metastore_of(self.root),
        }
        self.config.write_text(config_toml({"paths": paths, **(sections or {})}) + extra_toml)

    def command(self, script: str, *args: str) -> list[str]:
        return [SUBMIT, script, "--config", str(self.config), *args]

    def generate(self, *args: str, background: bool = False) -> subprocess.Popen | None:
        """``jobs/generate.py`` on this folder's config: to its end, or started in the background."""
        command = [PYTHON, "jobs/generate.py", "--config", str(self.config), "--log-level", "WARNING", *args]
        if background:
            return subprocess.Popen(command, cwd=ROOT)
        subprocess.run(command, cwd=ROOT, check=True)
        return None

    def run(self, script: str, *args: str, log_name: str = "jobs.log", check: bool = False):
        """Run a job to its end, its output appended to ``<dir>/<log_name>``."""
        with open(self.dir / log_name, "a") as log:
            return subprocess.run(
                self.command(script, *args), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=check
            )

    def stream(self, *args: str, log_name: str = "stream.log") -> subprocess.Popen:
        """Start ``jobs/stream.py`` in a process group of its own (as a supervisor would), at a
        lower CPU priority than the API beside it (``STREAM_NICENESS``)."""
        log = open(self.dir / log_name, "a")
        return subprocess.Popen(
            ["nice", "-n", str(STREAM_NICENESS), *self.command("jobs/stream.py", *args)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
