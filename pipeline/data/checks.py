"""Checks every case before any work: files readable and complete, no NaN, image and label on one grid,
label values declared in the manifest."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.data.manifest import Case, Manifest
from pipeline.errors import DataError
from pipeline.io.finite import count_non_finite, no_finite_message
from pipeline.io.scan import DEFAULT_MAX_VOXELS, check_nifti

AFFINE_TOL = 1e-3  # millimetres / direction cosines


class CheckedCase(BaseModel):
    """A case that passed the checks: absolute paths, grid, channel count and the manifest's extra files."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    split: str
    image: str
    label: str
    shape: list[int]
    spacing: list[float]
    channels: int
    extras: dict[str, str] = {}
    filled: int = 0  # NaN or infinite image voxels that preprocess.nan_policy: fill fills


def read_nifti(path: Path, what: str, case_id: str,
               max_voxels: int | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load a NIfTI image and its data, turning every failure into one clear :class:`DataError`.

    The header is checked before any voxel is read (:func:`pipeline.io.scan.check_nifti`): a real voxel type, at
    most ``max_voxels`` voxels (None: no budget), a file as long as its data, a finite, invertible affine with
    positive voxel sizes.
    """
    if not path.is_file():
        raise DataError(f"case '{case_id}': {what} file not found: {path}")
    try:
        img = check_nifti(path, max_voxels)
    except DataError as exc:
        raise DataError(f"case '{case_id}': {what} {exc}") from None
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for truncated or corrupt files
        raise DataError(
            f"case '{case_id}': cannot read {what} {path} (truncated or corrupt file: {exc}); "
            "re-download or regenerate it"
        ) from None
    return img, data


def check_case(case: Case, manifest: Manifest, nan_policy: str = "refuse", *,
               max_voxels: int = DEFAULT_MAX_VOXELS) -> CheckedCase:
    """Check one case. NaN or infinite image voxels are refused, or counted with ``nan_policy="fill"`` (the
    preprocessing fills them: :mod:`pipeline.transforms.finite`).

    Raises:
        DataError: naming the case, the file and what to do.
    """
    img, data = read_nifti(case.image, "image", case.id, max_voxels)
    nd = manifest.spatial_dims
    allowed = (2,) if nd == 2 else (3, 4)  # 2D: single-channel images; 3D: channels last in a 4D image
    if data.ndim not in allowed:
        raise DataError(f"case '{case.id}': image {case.image} has {data.ndim} dimensions; the manifest says "
                        f"{nd}D, so expected " + ("a 2D image" if nd == 2 else "a 3D volume or a 4D volume with "
                                                 "channels last"))
    channels = 1 if data.ndim == nd else data.shape[nd]
    if channels != len(manifest.channels):
        raise DataError(f"case '{case.id}': image {case.image} has {channels} channel(s) but the manifest declares "
                        f"{len(manifest.channels)} ({', '.join(manifest.channels)})")
    n_nan, no_finite = count_non_finite(data, None if data.ndim == nd else nd)  # 0 for integer images
    if n_nan and nan_policy != "fill":
        raise DataError(f"case '{case.id}': image {case.image} has {n_nan} NaN or infinite voxels; fix or "
                        "exclude the case, or fill them with the scan's minimum: preprocess.nan_policy: fill")
    if no_finite:
        raise DataError(no_finite_message(f"case '{case.id}': image {case.image}", no_finite, channels))
    assert case.label is not None
    lbl, ldata = read_nifti(case.label, "label", case.id, max_voxels)
    if ldata.shape[:nd] != data.shape[:nd] or ldata.ndim != nd:
        raise DataError(f"case '{case.id}': label {case.label} has shape {tuple(ldata.shape)} but image "
                        f"{case.image} has spatial shape {tuple(data.shape[:nd])}; they must be on the same grid")
    if not np.allclose(lbl.affine, img.affine, atol=AFFINE_TOL):
        raise DataError(f"case '{case.id}': label {case.label} and image {case.image} have different affines "
                        f"(image\n{np.round(img.affine, 4)}\nlabel\n{np.round(lbl.affine, 4)}); "
                        "resample the label onto the image grid")
    if np.issubdtype(ldata.dtype, np.floating):
        if not np.all(np.isfinite(ldata)) or not np.all(ldata == np.round(ldata)):
            raise DataError(f"case '{case.id}': label {case.label} holds non-integer or NaN values")
    values = {int(v) for v in np.unique(ldata)}
    undeclared = sorted(values - set(manifest.labels))
    if undeclared:
        raise DataError(f"case '{case.id}': label {case.label} holds values {undeclared} that the manifest "
                        f"{manifest.path} does not declare (labels: {manifest.labels})")
    zooms = [float(z) for z in img.header.get_zooms()[:nd]]
    missing = [str(p) for p in case.extras.values() if not p.is_file()]
    if missing:
        raise DataError(f"case '{case.id}': file(s) named in the manifest not found: {', '.join(missing)}")
    return CheckedCase(id=case.id, split=case.split, image=str(case.image), label=str(case.label),
                       shape=list(map(int, data.shape[:nd])), spacing=zooms, channels=channels,
                       extras={k: str(v) for k, v in case.extras.items()}, filled=n_nan)


def check_cases(cases: list[Case], manifest: Manifest, nan_policy: str = "refuse", *,
                max_voxels: int = DEFAULT_MAX_VOXELS) -> list[CheckedCase]:
    """Check every case and report all failing cases in one :class:`DataError` (``max_voxels``: the budget of
    each image and label, ``data.max_voxels``)."""
    infos, problems = [], []
    for case in cases:
        try:
            infos.append(check_case(case, manifest, nan_policy, max_voxels=max_voxels))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError(f"{len(problems)} case(s) of {manifest.path} failed the checks:\n"
                        + "\n".join(f"  - {p}" for p in problems))
    return infos
