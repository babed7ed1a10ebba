"""medseg-pipeline: train, run and evaluate medical image segmentation workflows."""

import os as _os

__version__ = "0.3.0"

# MLflow's usage telemetry (3.x) fetches its config in a background thread; offline (clinical networks, CI) that
# thread fails and removes a variable that concurrent tracking requests read, so a run against a tracking server
# could fail its first request and fall back to the local store. Off unless the user asks for it.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
