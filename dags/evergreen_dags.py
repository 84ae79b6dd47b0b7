"""Evergreen's Airflow DAGs: one set per pipeline spec (include/specs/*.yaml and $EVERGREEN_SPECS_DIR).

The factory builds them from the specs; this file only exposes them to the DAG processor.
"""

from evergreen.factory import build_dags

globals().update(build_dags())
