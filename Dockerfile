# Evergreen's Airflow image: the official Airflow 3.3 image + our locked requirements + the evergreen package.
# Built by `docker compose up -d` / `docker compose build` (docker-compose.yaml); also runs the MLflow server.
#
# Requirements come from requirements.lock (`make lock`), our own resolution of the whole stack, installed
# together with the image's Airflow pin so that pip fails loudly instead of moving Airflow.
FROM apache/airflow:3.3.2-python3.11

ARG AIRFLOW_VERSION=3.3.2
ENV GX_ANALYTICS_ENABLED=false \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --chown=airflow:0 requirements.lock /opt/evergreen/requirements.lock
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/evergreen/requirements.lock

# The project: dags/, plugins/ and include/ (evergreen + specs) as in the repository. The package is
# installed in editable mode so that it resolves to /opt/airflow/include/evergreen, where compose mounts
# the repository's include/ (code and specs change without a rebuild; the baked copy is the fallback).
COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow/
COPY --chown=airflow:0 include /opt/airflow/include
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 config/airflow_local_settings.py /opt/airflow/config/airflow_local_settings.py
COPY --chown=airflow:0 config/mlflow_auth.ini /opt/airflow/config/mlflow_auth.ini
RUN pip install --no-cache-dir --no-deps -e /opt/airflow \
    && python -c "import evergreen.factory, evergreen.spec as s; assert s.load_specs(), 'no specs'" \
    && python -m compileall -q /opt/airflow/include
