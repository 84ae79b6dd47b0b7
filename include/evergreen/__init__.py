"""Evergreen: continuous training (CI/CD/CT) for ML models on Apache Airflow 3."""

__version__ = "0.1.0"
