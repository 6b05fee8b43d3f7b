"""MLflow tracking, the only package that imports mlflow; stages import it only when asked to track (`--mlflow`).

    store.py     where runs go (MLFLOW_TRACKING_URI or sqlite:///mlflow.db), connecting, logging helpers
    runs.py      one run per pipeline execution: train starts it, later stages find it by content hashes
    registry.py  the registered model `pixelnet`, its aliases, and the champion rule
    pyfunc.py    what `mlflow.pyfunc.load_model` returns: a PixelNet checkpoint that scores images
"""
