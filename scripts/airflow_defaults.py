"""Make .venv-airflow's `airflow` find this checkout's DAGs with no set-up: run by `make airflow`.

Writes a ``.pth`` start-up line into the Airflow virtualenv that sets defaults, which any variable
already in the environment overrides: the DAGs folder (``dags/``), AIRFLOW_HOME (``data/airflow``)
and no example DAGs.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {
    "AIRFLOW_HOME": str(ROOT / "data" / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
}


def main() -> None:
    line = "import os; " + "; ".join(f"os.environ.setdefault({k!r}, {v!r})" for k, v in DEFAULTS.items())
    target = Path(sysconfig.get_paths()["purelib"]) / "streamrec_airflow_defaults.pth"
    target.write_text(line + "\n")
    print(f"{target}: {', '.join(f'{k}={v}' for k, v in DEFAULTS.items())} unless set")


if __name__ == "__main__":
    main()
