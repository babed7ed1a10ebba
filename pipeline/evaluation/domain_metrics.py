"""Metrics a field needs beyond Dice and surface distances, chosen by the manifest's ``domain``.

Each function is registered under the domain name manifests use (``cell_microscopy``, ``oct_retina``) and returns
the rows of ``evaluate/cases_domain.csv`` for one test case: case-level values (the names in
:data:`CASE_LEVEL` also go into ``cases.csv``) and any per-structure values. A domain with no registered metrics
gets none. To add one, register a function here (or in a module of its own imported by this one) and test it.
"""

from __future__ import annotations

from typing import Any, Protocol

import nibabel as nib
import numpy as np

from pipeline.config.schema import EvaluateConfig
from pipeline.evaluation.domain import (
    boundary_errors,
    boundary_rows,
    instance_metrics,
    instances_by_watershed,
    instances_from_semantic,
)
from pipeline.evaluation.metrics import nanmean
from pipeline.registry import Registry

# Case-level domain metrics that also go into cases.csv (repeated on each class row of the case).
CASE_LEVEL = ("instance_f1", "mean_matched_iou", "boundary_mae_px", "boundary_mae_um")


class DomainMetric(Protocol):
    def __call__(self, case: Any, truth: np.ndarray, pred: np.ndarray, spacing: list[float],
                 settings: EvaluateConfig, instances: np.ndarray | None = None) -> list[dict[str, Any]]: ...


DOMAIN_METRICS: Registry[DomainMetric] = Registry("domain")


def domain_rows(domain: str, case: Any, truth: np.ndarray, pred: np.ndarray, spacing: list[float],
                settings: EvaluateConfig, instances: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The rows of the metrics registered for ``domain`` (none when nothing is registered for it); ``instances``
    is the predicted instance map when the workflow makes one (``instances`` section)."""
    if domain not in DOMAIN_METRICS:
        return []
    metric = DOMAIN_METRICS.get(domain)
    if instances is None:  # metrics written before instance maps existed take five arguments
        return metric(case, truth, pred, spacing, settings)
    return metric(case, truth, pred, spacing, settings, instances=instances)


@DOMAIN_METRICS.register("cell_microscopy")
def cell_instances(case: Any, truth: np.ndarray, pred: np.ndarray, spacing: list[float],
                   settings: EvaluateConfig, instances: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Object F1 at IoU 0.5 (with precision and recall) and mean matched IoU. Predicted objects are the
    workflow's instance map when it makes one (``instances``), else the connected components of the semantic
    prediction or a distance-transform watershed of it (``evaluate.instances``); reference objects come from the
    case's ``instances`` file when the manifest has one, else from the reference's connected components."""
    ref = (np.asarray(nib.load(case.extras["instances"]).dataobj) if "instances" in case.extras
           else instances_from_semantic(truth, range(1, int(truth.max()) + 1)))
    if instances is not None:
        pred_inst = np.asarray(instances)
    else:
        split = instances_by_watershed if settings.instances == "watershed" else instances_from_semantic
        pred_inst = split(pred, range(1, max(int(pred.max()), 1) + 1))
    m = instance_metrics(pred_inst, ref)
    return [{"case": case.id, "instance_f1": m["f1"], "instance_precision": m["precision"],
             "instance_recall": m["recall"], "mean_matched_iou": m["mean_matched_iou"],
             "n_pred": m["n_pred"], "n_true": m["n_true"]}]


@DOMAIN_METRICS.register("oct_retina")
def oct_boundaries(case: Any, truth: np.ndarray, pred: np.ndarray, spacing: list[float],
                   settings: EvaluateConfig, instances: np.ndarray | None = None) -> list[dict[str, Any]]:
    """B-scans: mean absolute position error of each layer boundary, in pixels and µm (depth along the second
    axis, as the importers store it). Volumes get none."""
    if truth.ndim != 2:
        return []
    errs = boundary_errors(pred, boundary_rows(truth), axial_mm=spacing[1])
    px = [v for k, v in errs.items() if k.endswith("_px")]
    um = [v for k, v in errs.items() if k.endswith("_um")]
    return [{"case": case.id, "boundary_mae_px": nanmean(px), "boundary_mae_um": nanmean(um), **errs}]
