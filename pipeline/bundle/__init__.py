"""Model bundles: a trained model as a self-contained, versioned folder that ``pipeline infer`` runs.

A bundle holds ``bundle.json`` (format version, model architecture, preprocessing / inference / postprocessing
settings, label and channel names, package versions, where it came from) and ``weights.pt`` (a plain state dict,
loaded with ``torch.load(weights_only=True)``: loading a bundle never unpickles arbitrary objects). ``pipeline export``
also logs it to MLflow as an MLflow Model (:mod:`pipeline.bundle.pyfunc`): ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` segment scans with it as ``pipeline infer`` does.
"""

from pipeline.bundle.bundle import (
    BUNDLE_FORMAT_VERSION,
    Bundle,
    export_bundle,
    load_bundle,
    log_bundle_to_mlflow,
    resolve_model,
    write_bundle,
)

__all__ = ["BUNDLE_FORMAT_VERSION", "Bundle", "export_bundle", "load_bundle", "log_bundle_to_mlflow",
           "resolve_model",
           "write_bundle"]
