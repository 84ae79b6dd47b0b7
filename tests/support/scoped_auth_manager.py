"""An auth manager for the page tests: Airflow's SimpleAuthManager, except that the user ``outsider`` may
see no DAG of the spec ``fraud`` (SimpleAuthManager's roles all read every DAG, so a user without
permission on one spec needs an auth manager with per-DAG rules, as FAB or Keycloak would give)."""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

OUTSIDER = "outsider"
HIDDEN_PREFIX = "fraud_"


class ScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if user.get_name() == OUTSIDER and details is not None and (details.id or "").startswith(HIDDEN_PREFIX):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
