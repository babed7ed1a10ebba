"""The pipeline's storage convention for cases and manifests, and the helpers that write it.

Every importer (:mod:`pipeline.data.importers`), fetcher (:mod:`pipeline.data.fetchers`) and synthetic generator
(:mod:`pipeline.data.generators`) writes data this way:

* every case is NIfTI; 2D images are 2D arrays ``(X, Y)`` (``X`` = image column, ``Y`` = image row, i.e. the
  transpose of the usual ``(row, col)`` array, as MONAI's PIL/ITK readers return it), 3D volumes ``(X, Y, Z)``;
  the affine holds the spacing in **mm** on its diagonal (2D and TIFF/PNG sources), or the source's full geometry
  (RETOUCH, through SimpleITK);
* images float32, semantic labels uint8, instance labels uint16 (``instances`` key of the case), OCT layer
  boundaries as a float32 ``.npy`` array ``(8, X)`` of row positions (``boundaries`` key);
* files go to ``out/imagesTr``, ``out/labelsTr``, ``out/instancesTr``, ``out/boundariesTr`` (and ``out/imagesTs``
  for unlabelled images), and the manifest to ``out/<name>.json`` with paths relative to ``out``; it is readable by
  ``monai.data.load_decathlon_datalist(path, is_segmentation=True, data_list_key=KEY)`` for ``training``,
  ``validation`` and ``test``.

Splits come from :func:`pipeline.data.splits.split_cases` (about 70/10/20, folds 0..4 round-robin over training).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.splits import rel_to, split_cases
from pipeline.errors import DataError
from pipeline.io.atomic import atomic_path, write_json

__all__ = [
    "manifest_base",
    "parse_spacing",
    "read_2d_or_stack",
    "save_nifti",
    "save_npy",
    "spacing_affine",
    "write_manifest",
]


def spacing_affine(spacing: Sequence[float]) -> np.ndarray:
    """4x4 affine with ``spacing`` (mm) on the diagonal and origin 0 (2 or 3 values)."""
    affine = np.eye(4)
    for d, s in enumerate(spacing):
        affine[d, d] = float(s)
    return affine


def save_nifti(target: str | os.PathLike[str], data: np.ndarray, affine: np.ndarray, dtype: Any) -> None:
    """Write ``data`` as ``dtype`` NIfTI (qform and sform code 1, units mm) to ``target`` atomically."""
    import nibabel as nib

    dtype = np.dtype(dtype)
    nii = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    nii.set_data_dtype(dtype)
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    nii.header.set_xyzt_units(xyz="mm")
    if dtype.kind == "f":
        nii.header["scl_slope"] = 1.0
        nii.header["scl_inter"] = 0.0
    with atomic_path(target) as tmp:
        nib.save(nii, str(tmp))


def save_npy(target: str | os.PathLike[str], data: np.ndarray) -> None:
    """Write ``data`` as ``.npy`` to ``target`` atomically."""
    with atomic_path(target, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(data), allow_pickle=False)


def manifest_base(name: str, description: str, *, domain: str, spatial_dims: int, labels: dict[str, str],
                  channels: dict[str, str], reference: str, licence: str, source: dict[str, Any]) -> dict[str, Any]:
    """The top-level fields of an imported manifest (splits added by :func:`write_manifest`)."""
    return {
        "name": name,
        "description": description,
        "reference": reference,
        "licence": licence,
        "domain": domain,
        "spatial_dims": int(spatial_dims),
        "tensorImageSize": f"{int(spatial_dims)}D",
        "modality": dict(channels),
        "channel_names": dict(channels),
        "labels": dict(labels),
        "source": dict(source),
    }


_CASE_KEYS = ("image", "label", "instances", "boundaries")


def write_manifest(out_file: Path, base: dict[str, Any], cases: Sequence[dict[str, Any]], *, seed: int = 0,
                   group_key: str | None = None, unlabeled: Sequence[dict[str, Any]] = (),
                   note: str = "", extra_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Split ``cases`` (dicts with ``id`` and absolute ``image``/``label``/... paths, ``spacing``) and write the
    manifest ``out_file`` atomically; paths become relative to its folder. Returns the manifest.

    Raises:
        DataError: ``cases`` is empty.
    """
    out_file = Path(out_file)
    folder = out_file.parent
    if not cases:
        raise DataError(f"{base.get('name')}: no labelled case found to import")
    splits = split_cases(list(cases), seed=seed, group_key=group_key)

    def entry(c: dict[str, Any]) -> dict[str, Any]:
        e: dict[str, Any] = {}
        for k in _CASE_KEYS:
            if c.get(k) is not None:
                e[k] = rel_to(c[k], folder)
        e["id"] = c["id"]
        if "fold" in c:
            e["fold"] = c["fold"]
        e["spacing"] = [round(float(s), 9) for s in c["spacing"]]
        for k in extra_keys:
            if k in c:
                e[k] = c[k]
        return e

    manifest = dict(base)
    manifest["numTraining"] = len(splits["training"])
    if note:
        manifest["note"] = note + " Paths are relative to this file's folder."
    for split in ("training", "validation", "test"):
        manifest[split] = [entry(c) for c in splits[split]]
    manifest["unlabeled"] = [
        {"id": u["id"], "image": rel_to(u["image"], folder),
         "spacing": [round(float(s), 9) for s in u["spacing"]]}
        for u in sorted(unlabeled, key=lambda u: u["id"])
    ]
    write_json(out_file, manifest)
    return manifest


def parse_spacing(spacing: Any, n: int, default: Sequence[float], what: str) -> tuple[float, ...]:
    """Validate a user-given spacing (mm): ``n`` positive numbers, or ``None`` for ``default``.

    Raises:
        DataError: ``spacing`` is not ``n`` positive finite numbers.
    """
    if spacing is None:
        return tuple(float(s) for s in default)
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        spacing = [spacing] * n
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise DataError(f"{what}: spacing must be {n} positive numbers (mm), got {spacing!r}") from None
    if len(values) < n or any(not (v > 0 and np.isfinite(v)) for v in values[:n]):
        raise DataError(f"{what}: spacing must be {n} positive numbers (mm), got {spacing!r}")
    return values[:n]


def read_2d_or_stack(path: Path, what: str) -> np.ndarray:
    """Read a PNG (via Pillow) or TIFF (via tifffile) into a numpy array in its native (row, col[, ...]) order.

    Raises:
        DataError: the file cannot be read as an image.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(str(path)))
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    except Exception as exc:  # readers raise many types for corrupt files
        raise DataError(f"{what}: cannot read {path} ({type(exc).__name__}: {exc}); the file is corrupt or not "
                        "an image") from None
