"""Airflow: score the lake every hour with ``serving score --incremental`` in a BashOperator.

Copy into the DAGs folder of an Airflow that can run ``serving`` (same image or virtualenv);
``serving`` itself does not depend on Airflow. A run that finds another still holding the
output's lock exits 75 and the task is marked skipped, not failed; exit 1 (the job failed) and
2 (bad invocation) fail the task. ``{{ ds }}`` is the run's logical date.
"""

import pendulum
from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(
    dag_id="score_digits",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
):
    BashOperator(
        task_id="score",
        bash_command=(
            'serving score --repository "$MODELS" --model "$MODEL" --input "$LAKE" '
            '--output "$SCORED/ds={{ ds }}" --incremental'
        ),
        env={
            "MODELS": "/srv/models",
            "MODEL": "digits",
            "LAKE": "/srv/lake/digits",
            "SCORED": "/srv/lake/scored/digits",
        },
        append_env=True,
        skip_on_exit_code=75,
        retries=2,
    )
