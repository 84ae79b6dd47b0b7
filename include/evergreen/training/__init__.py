"""Training: ``window`` (which partitions, split by day), ``model`` (the served pyfunc), ``streaming``
(bounded-memory XGBoost input), ``baseline`` (the linear model to beat) and ``train`` (the run)."""
