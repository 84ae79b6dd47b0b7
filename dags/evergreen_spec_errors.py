"""Reports invalid pipeline specs as this file's Airflow DAG import error (naming file and field).

``evergreen_dags.py`` builds the DAGs of every valid spec; a spec that does not parse must not take them
down, yet must be visible in the Airflow UI. This file defines no DAG: it fails to import, listing every
invalid spec, exactly when there is one.
"""

from evergreen.spec import SpecError, load_valid_specs

_, _errors = load_valid_specs()
if _errors:
    raise SpecError(f"{len(_errors)} invalid Evergreen spec file(s); their DAGs are not built:\n"
                    + "\n".join(str(e) for e in _errors))
