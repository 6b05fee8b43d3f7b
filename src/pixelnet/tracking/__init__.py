"""MLflow tracking for the pipeline: the only package that imports mlflow.

    store.py     where runs go (MLFLOW_TRACKING_URI or sqlite:///mlflow.db), connecting, logging helpers
    runs.py      one run per pipeline execution: train starts it, later stages find it by content hashes
    registry.py  the registered model `pixelnet`, its aliases, and the champion rule
    pyfunc.py    what `mlflow.pyfunc.load_model` returns: a PixelNet checkpoint that scores images

The CLI imports it only when a stage is asked to track (`--mlflow`, as dvc.yaml
does); the library and its tests never need it.
"""
