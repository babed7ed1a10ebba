"""The in-memory scan (:class:`Scan`), the conversions between ITK's LPS geometry and a RAS+ affine, and the error
of a written file whose geometry differs from its scan's (:func:`drift_error`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError


@dataclass
class Scan:
    """A scan's voxels and geometry.

    Attributes:
        path: the file or DICOM folder it was read from.
        kind: ``"nifti"``, ``"itk"`` (MetaImage, NRRD), ``"dicom"``, ``"tiff"`` or ``"png"``.
        array: voxel data indexed like nibabel, spatial axes ``(x, y[, z])`` first, channels (or a 4th ITK axis)
            last.
        affine: 4x4 voxel-to-world matrix in RAS+ millimetres.
        header: what writing needs: for NIfTI the nibabel image as loaded (its header holds the qform, sform and
            their codes); for ITK, DICOM, TIFF and PNG a dict of the spatial geometry in ITK's LPS convention,
            ``origin``, ``spacing``, ``direction`` (row-major, flat) and ``size`` (x, y[, z]) (DICOM adds
            ``series_id``; TIFF and PNG add ``microscopy``, how the file states its pixel size, see
            :mod:`~pipeline.io.scan.microscopy`).
    """

    path: Path
    kind: str
    array: np.ndarray
    affine: np.ndarray
    header: Any

    @property
    def spatial_dims(self) -> int:
        """2 for a 2D image, else 3."""
        if isinstance(self.header, dict):
            return len(self.header["size"])
        return 2 if self.array.ndim == 2 else 3

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The voxel grid's shape, ``(x, y[, z])``."""
        return tuple(int(s) for s in self.array.shape[: self.spatial_dims])


def drift_error(target: Path, scan: Scan, what: str, written: Any = None, expected: Any = None) -> DataError:
    """The error of a written file (``target``) whose ``what`` differs from ``scan``'s: nothing was written."""
    detail = "" if written is None else f" (written {_show(written)}, expected {_show(expected)})"
    return DataError(f"geometry drift writing {target}: {what} differs from {scan.path}{detail}; nothing was "
                     "written")


def _show(value: Any) -> str:
    return str(np.round(np.asarray(value, dtype=float), 6).tolist())


def itk_affine(geometry: dict[str, Any]) -> np.ndarray:
    """RAS+ voxel-to-world 4x4 matrix of an ITK (LPS) geometry of 2 or 3 dimensions."""
    n = len(geometry["origin"])
    direction = np.asarray(geometry["direction"], dtype=float).reshape(n, n)
    affine = np.eye(4)
    affine[:n, :n] = direction * np.asarray(geometry["spacing"], dtype=float)
    affine[:n, 3] = geometry["origin"]
    affine[:2] *= -1  # LPS -> RAS
    return affine


def itk_geometry(scan: Scan) -> dict[str, Any]:
    """The scan's grid as ITK geometry (LPS): the ITK header as read, or derived from a NIfTI affine."""
    if isinstance(scan.header, dict):
        return {k: scan.header[k] for k in ("origin", "spacing", "direction", "size")}
    n = scan.spatial_dims
    lps = scan.affine.copy()
    lps[:2] *= -1
    spacing = np.linalg.norm(lps[:n, :n], axis=0)
    return {
        "origin": tuple(float(v) for v in lps[:n, 3]),
        "spacing": tuple(float(v) for v in spacing),
        "direction": tuple(float(v) for v in (lps[:n, :n] / spacing).ravel()),
        "size": scan.spatial_shape,
    }
