"""The workflow checks that need the data: the keys of the manifest it names (:func:`read_manifest_keys`), the
values that must fit them (:func:`_check_against_data`: one size per spatial axis, windows within the voxel budget,
axes and classes that exist), and the model built on PyTorch's meta device with the manifest's channel and class
counts (:func:`_check_model_builds`: its arguments, its size and its stride).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.messages import _cut, _shown
from pipeline.config.schema import Workflow


@dataclass(frozen=True)
class ManifestKeys:
    """What the workflow's checks need from its manifest (the prepare stage reads and checks the whole file)."""

    path: Path
    spatial_dims: int
    labels: dict[int, str]
    channels: int


def read_manifest_keys(path: Path) -> tuple[ManifestKeys | None, list[str]]:
    """The manifest's ``spatial_dims`` (default 3), ``labels`` and channel count, read defensively.

    Returns:
        The keys, or None with the problems (each starting with ``data.manifest``, naming the file and the rule).
    """
    from pipeline.errors import DataError
    from pipeline.io.jsondoc import MAX_LABELS, read_manifest_document

    where = f"data.manifest: {path}"
    try:  # the one definition of a readable manifest file (size, UTF-8, JSON, nesting)
        doc = read_manifest_document(Path(path))
    except DataError as exc:
        return None, [f"data.manifest: {exc}"]
    if not isinstance(doc, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(doc), "number")
        return None, [(f"{where}: a manifest is a JSON object with 'labels' and the split lists 'training', "
                       f"'validation' and 'test', not a JSON {kind}")]
    problems: list[str] = []
    dims = doc.get("spatial_dims", 3)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims not in (2, 3):
        problems.append(f"{where}: 'spatial_dims' must be the number 2 or 3, got {_shown(dims)}")
    labels_raw = doc.get("labels")
    labels: dict[int, str] = {}
    if isinstance(labels_raw, dict) and labels_raw and all(
            isinstance(k, str) and re.fullmatch(r"0|[1-9][0-9]*", k) for k in labels_raw) and len(labels_raw) <= MAX_LABELS:
        labels = {int(k): str(v) for k, v in labels_raw.items()}
    if not labels or sorted(labels) != list(range(len(labels))):
        problems.append(f"{where}: 'labels' must map the label values 0, 1, ..., N-1 (as strings) to class names, "
                        f"e.g. {{\"0\": \"background\", \"1\": \"tumour\"}}; got {_shown(labels_raw)}")
    channels = next((doc[k] for k in ("channel_names", "modality") if doc.get(k) is not None), None)
    n_channels = len(channels) if isinstance(channels, dict) and channels else 1
    if problems:
        return None, problems
    return ManifestKeys(Path(path), int(dims), labels, n_channels), []


def _check_against_data(workflow: Workflow, keys: ManifestKeys) -> list[str]:
    """Values that must fit the data: one size entry per spatial axis, windows within the voxel budget, axes
    that exist, classes that are labels of the manifest."""
    dims = keys.spatial_dims
    pre, infer, val = workflow.preprocess, workflow.infer, workflow.train.validation
    validation_roi = val.roi_size or pre.patch.size
    problems = [f"{key}: {len(size)} entries, but the data are {dims}D (one entry per spatial axis), got {size}"
                for key, size in (("preprocess.patch.size", pre.patch.size),
                                  ("infer.roi_size", infer.roi_size),
                                  ("train.validation.roi_size", validation_roi),
                                  ("preprocess.spacing", pre.spacing or [1.0] * dims))
                if len(size) != dims]
    budget = workflow.data.max_voxels
    for key, size in (("preprocess.patch.size", pre.patch.size), ("infer.roi_size", infer.roi_size),
                      ("train.validation.roi_size", validation_roi)):
        if math.prod(size) > budget:
            problems.append(f"{key}: a window of {size} is {math.prod(size):,} voxels, more than data.max_voxels "
                            f"({budget:,}, the largest scan read); use a smaller window")
    axes = ", ".join(map(str, range(dims)))
    for key, values in (("preprocess.augment.flip_axes", pre.augment.flip_axes),
                        ("infer.tta_flip_axes", infer.tta_flip_axes),
                        ("train.validation.tta_flip_axes", val.tta_flip_axes)):
        bad = [a for a in values if a >= dims]
        if bad:
            problems.append(f"{key}: axis {bad[0]} does not exist in {dims}D data (the spatial axes are {axes}), "
                            f"got {values}")
    inst = workflow.instances
    if inst is not None and inst.method == "three_class" and len(keys.labels) != 2:
        problems.append(f"instances.method: three_class splits one object class into interior and touching "
                        f"boundary, but the manifest {keys.path} has {len(keys.labels)} labels; use distance, "
                        f"watershed or components, got three_class")
    classes = workflow.postprocess.keep_largest_component
    if isinstance(classes, list):
        unknown = [c for c in classes if c not in keys.labels or c == 0]
        if unknown:
            known = ", ".join(f"{c} ({_cut(n, 30)})" for c, n in sorted(keys.labels.items()) if c)
            problems.append(f"postprocess.keep_largest_component: class {unknown[0]} is not a foreground label of "
                            f"the manifest {keys.path} (its classes: {known or 'none'}), got {classes}")
    return problems


def _check_model_builds(workflow: Workflow, keys: ManifestKeys) -> list[str]:
    """Build the model on the meta device (shapes without memory, channel counts from the manifest) so that
    argument values the constructor rejects, a model too large to allocate, and patch or window sizes it cannot
    take, are reported before any work starts."""
    from pipeline.errors import PipelineError
    from pipeline.models.shapes import ModelTooLarge, build_on_meta, check_divisible

    validation_roi = workflow.train.validation.roi_size or workflow.preprocess.patch.size
    name = workflow.model.name
    try:
        model = build_on_meta(name, workflow.model.kwargs(), keys.channels, max(len(keys.labels), 2),
                              spatial_dims=keys.spatial_dims)
    except ModelTooLarge as exc:
        return [f"model: {exc}"]
    except (ValueError, TypeError) as exc:
        return [f"model: {_cut(str(exc))}"]
    except Exception as exc:  # noqa: BLE001 - a constructor's own failure on these argument values
        return [f"model: '{name}' cannot be built with these arguments: {_cut(str(exc), 200)}"]
    try:
        check_divisible(model, {"preprocess.patch.size": workflow.preprocess.patch.size,
                                "infer.roi_size": workflow.infer.roi_size,
                                "train.validation.roi_size": validation_roi})
    except PipelineError as exc:
        return [str(exc)]
    return []
