"""Import the ISBI 2012 EM segmentation challenge (Drosophila VNC ssTEM) into the pipeline's convention.

Layout under ``src``: ``train-volume.tif`` and ``train-labels.tif`` (multipage TIFF, 30 x 512 x 512, 8 bit) and
optionally ``test-volume.tif`` (unlabelled; listed under ``unlabeled``).

Conversion (each slice is one 2D case ``isbi2012_SS``, arrays ``(X, Y)``):

* image float32 (grey values 0..255 unchanged);
* label uint8: **``1`` membrane** (label value < 128, i.e. 0 in the challenge file) and ``0`` cell interior
  (255), so the foreground is the thin membrane the challenge asks to detect, as in the U-Net paper;
* instances uint16: 4-connected components of the cell interior, one id per neurite profile (for Rand / VI
  style instance metrics); membrane pixels are 0.

Spacing: the ssTEM voxels are 4 x 4 x 50 nm, so the default pixel spacing is 4e-6 mm. Slices are split
individually (they come from one volume, so neighbouring slices are correlated). Writes ``out/isbi2012.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.importers import IMPORTERS
from pipeline.data.storage import (
    manifest_base,
    parse_spacing,
    read_2d_or_stack,
    save_nifti,
    spacing_affine,
    write_manifest,
)
from pipeline.errors import DataError

NAME = "isbi2012"
LABELS = {"0": "cell interior", "1": "membrane"}
DEFAULT_SPACING = (4e-6, 4e-6)  # mm (4 nm)


def _stack(path: Path) -> np.ndarray:
    arr = read_2d_or_stack(path, NAME)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"{NAME}: {path} has shape {arr.shape}; expected a multipage grey TIFF (slices, rows, cols)")
    return arr


@IMPORTERS.register("isbi2012")
def import_isbi2012(src: Path, out: Path, spacing: Any = None, seed: int = 0) -> Path:
    """Convert ``src`` (the ISBI 2012 folder) into ``out`` and write ``out/isbi2012.json``.

    Raises:
        DataError: ``train-volume.tif`` or ``train-labels.tif`` missing, unreadable or of different shapes.
    """
    src, out = Path(src), Path(out)
    volume_path, labels_path = src / "train-volume.tif", src / "train-labels.tif"
    missing = [p.name for p in (volume_path, labels_path) if not p.is_file()]
    if missing:
        raise DataError(f"no {' and '.join(repr(m) for m in missing)} found under {src}: is this the ISBI 2012 EM "
                        "challenge folder (train-volume.tif, train-labels.tif)?")
    sp = parse_spacing(spacing, 2, DEFAULT_SPACING, NAME)
    affine = spacing_affine(sp)
    volume = _stack(volume_path)
    labels = _stack(labels_path)
    if volume.shape != labels.shape:
        raise DataError(f"{NAME}: {volume_path.name} has shape {volume.shape} but {labels_path.name} has "
                        f"{labels.shape}; they must match slice for slice")
    width = max(2, len(str(volume.shape[0] - 1)))
    cases: list[dict[str, Any]] = []
    for k in range(volume.shape[0]):
        cid = f"{NAME}_{k:0{width}d}"
        membrane = labels[k] < 128
        from scipy import ndimage  # lazy: the CLI imports every importer to list them

        instances, _ = ndimage.label(~membrane)  # 4-connected
        paths = {"instances": out / "instancesTr" / f"{cid}.nii.gz", "label": out / "labelsTr" / f"{cid}.nii.gz",
                 "image": out / "imagesTr" / f"{cid}.nii.gz"}
        save_nifti(paths["instances"], instances.astype(np.uint16).T, affine, np.uint16)
        save_nifti(paths["label"], membrane.astype(np.uint8).T, affine, np.uint8)
        save_nifti(paths["image"], volume[k].astype(np.float32).T, affine, np.float32)
        cases.append({"id": cid, **paths, "spacing": sp})
    unlabeled: list[dict[str, Any]] = []
    test_path = src / "test-volume.tif"
    if test_path.is_file():
        test = _stack(test_path)
        for k in range(test.shape[0]):
            cid = f"{NAME}_test_{k:0{width}d}"
            image_path = out / "imagesTs" / f"{cid}.nii.gz"
            save_nifti(image_path, test[k].astype(np.float32).T, affine, np.float32)
            unlabeled.append({"id": cid, "image": image_path, "spacing": sp})
    base = manifest_base(
        NAME,
        "ISBI 2012 EM segmentation challenge: serial-section TEM of the Drosophila first instar larva ventral "
        "nerve cord; membrane (1) versus cell interior (0), one case per slice.",
        domain="electron_microscopy", spatial_dims=2, labels=LABELS, channels={"0": "EM"},
        reference="Arganda-Carreras I. et al., Crowdsourcing the creation of image segmentation algorithms for "
                  "connectomics, Frontiers in Neuroanatomy 9:142 (2015); Cardona A. et al. (2010).",
        licence="see the ISBI 2012 challenge terms",
        source={"url": "https://imagej.net/events/isbi-2012-segmentation-challenge", "imported_from": str(src)},
    )
    note = ("Imported by pipeline.data.importers.isbi2012: label 1 = membrane (0 in train-labels.tif), 0 = cell "
            "interior (255); instances = 4-connected interior components; arrays (X, Y); spacing "
            f"{'given by the user' if spacing is not None else '4 nm (4e-6 mm)'}. Split by slice, seed {seed}.")
    target = out / f"{NAME}.json"
    write_manifest(target, base, cases, seed=seed, unlabeled=unlabeled, note=note)
    return target
