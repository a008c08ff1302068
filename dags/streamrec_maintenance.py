"""The batch side of streamrec on a schedule: retrain, check the profiles, compact and vacuum, verify.

Each task runs one job through ./spark-submit.sh with ``--config $STREAMREC_CONFIG`` (default
conf/pipeline.toml), so it sees the same lake and metastore as the stream. Run it once without a
scheduler:

    STREAMREC_CONFIG=conf/pipeline.toml .venv-airflow/bin/airflow dags test streamrec_maintenance

Every task is safe while the stream runs: training rewrites only ``recommendations``, the profile
check writes nothing, compaction and VACUUM change no data.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

PROJECT = Path(__file__).resolve().parent.parent


def job(script: str, *flags: str) -> str:
    """The shell command that runs ``jobs/<script>`` through spark-submit on the configured lake."""
    return (
        f'cd "{PROJECT}" && ./spark-submit.sh jobs/{script} --config "${{STREAMREC_CONFIG:-conf/pipeline.toml}}" '
        + " ".join(flags)
    )


with DAG(
    dag_id="streamrec_maintenance",
    description="retrain, check profiles, compact and vacuum, verify the streamrec lake",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0, "execution_timeout": timedelta(hours=2)},
    tags=["streamrec"],
) as dag:
    retrain = BashOperator(task_id="retrain", bash_command=job("train.py"))
    check_profiles = BashOperator(task_id="check_profiles", bash_command=job("profiles.py", "--check"))
    compact_and_vacuum = BashOperator(task_id="compact_and_vacuum", bash_command=job("maintenance.py", "--compact"))
    verify = BashOperator(task_id="verify", bash_command=job("verify.py"))

    retrain >> check_profiles >> compact_and_vacuum >> verify
