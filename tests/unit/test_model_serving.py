"""The logged pyfunc model is self-contained: it loads and predicts where evergreen and airflow cannot be
imported, and gives exactly the predictions it gives in the training process."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from evergreen.training.train import train_challenger
from evergreen.training.window import select_window
from helpers import START, make_feature_day, publish_days, small_spec

SERVE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = ("evergreen", "airflow")

    def blocked(name):
        return any(name == b or name.startswith(b + ".") for b in BLOCKED)

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Block())
    try:
        import evergreen  # noqa: F401
    except ImportError:
        evergreen_blocked = True
    else:
        evergreen_blocked = False
    try:
        import airflow  # noqa: F401
    except ImportError:
        airflow_blocked = True
    else:
        airflow_blocked = False

    model_uri, frame_path, out_path = sys.argv[1:4]
    import mlflow
    import numpy as np
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    predictions = np.asarray(model.predict(pd.read_parquet(frame_path)))
    np.save(out_path, predictions)
    print(json.dumps({
        "evergreen_blocked": evergreen_blocked,
        "airflow_blocked": airflow_blocked,
        "modules": sorted(m for m in sys.modules if blocked(m)),
        "model_class": type(model.unwrap_python_model()).__name__,
        "dtype": str(predictions.dtype),
        "shape": list(predictions.shape),
    }))
    """
)


def test_logged_model_serves_without_evergreen_or_airflow(storage_root: Path, mlflow_uri: str,
                                                          tmp_path: Path) -> None:
    spec = small_spec("fraud")
    publish_days(spec, START, 14)
    trained = train_challenger(spec, select_window(spec, START + dt.timedelta(days=13)), lineage={"reason": "test"})
    assert trained["model_uri"].startswith("models:/")

    # A day the model never saw, with missing values in the nullable numerics.
    frame = make_feature_day(spec, START + dt.timedelta(days=20), rows=300, seed=7)[list(spec.model_features)]
    assert frame.isna().any().any()
    frame_path = tmp_path / "serve.parquet"
    frame.to_parquet(frame_path)

    model = mlflow.pyfunc.load_model(trained["model_uri"])
    expected = np.asarray(model.predict(pd.read_parquet(frame_path)))
    assert expected.shape == (300,)
    assert expected.dtype == np.float64
    assert np.all((expected > 0.0) & (expected < 1.0))  # P(fraud)
    assert len(np.unique(expected)) > 10
    # The parquet round trip does not change what the model sees.
    assert np.array_equal(np.asarray(model.predict(frame)), expected)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    env["MLFLOW_REGISTRY_URI"] = os.environ["MLFLOW_REGISTRY_URI"]
    out_path = tmp_path / "predictions.npy"
    result = subprocess.run([sys.executable, "-c", SERVE, trained["model_uri"], str(frame_path), str(out_path)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report == {
        "evergreen_blocked": True,
        "airflow_blocked": True,
        "modules": [],
        "model_class": "EvergreenModel",
        "dtype": "float64",
        "shape": [300],
    }
    served = np.load(out_path)
    assert np.array_equal(served, expected)
