"""Evergreen in the Airflow UI: the model-health page (``/evergreen``) in the navigation, and its metrics.

The app lives in ``evergreen.webapp`` (it authenticates and authorizes every route itself: Airflow does
not do it for plugin apps).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from evergreen.webapp import PREFIX, create_app


class EvergreenPlugin(AirflowPlugin):
    name = "evergreen"
    fastapi_apps = [{"app": create_app(), "url_prefix": PREFIX, "name": "Evergreen"}]
    external_views = [{"name": "Evergreen", "href": "/evergreen/", "destination": "nav", "url_route": "evergreen",
                       "category": "browse"}]
