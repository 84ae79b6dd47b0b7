"""Development tooling, not part of the installed ``evergreen`` package: the local Airflow + MLflow stack
(``localstack``) and ``make demo`` (``demo``)."""
