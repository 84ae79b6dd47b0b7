"""Drift: ``profile`` (the reference a model is trained with), ``statistics`` (PSI, KS, missing rates and
the day's verdict) and ``html`` (the report page). Storage and MLflow I/O live in ``evergreen.monitoring``."""
