"""Reading MetaImage (``.mha``, ``.mhd``) and NRRD files with SimpleITK, and the ITK header checks and the
conversion to a :class:`~pipeline.io.scan.geometry.Scan` that DICOM series (:mod:`~pipeline.io.scan.dicom`) share.

A header's data files must lie in its folder and be there, its voxel type must be real, its voxel count within the
budget, its spacing positive and its direction invertible, and an uncompressed data file long enough for what the
header declares, all before a voxel is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.errors import DataError
from pipeline.io.scan.geometry import Scan, itk_affine
from pipeline.io.scan.headers import DataLayout, metaimage_layout, nrrd_layout
from pipeline.io.scan.limits import (
    cannot_read,
    check_axes,
    check_data_size,
    check_spacing,
    check_voxel_budget,
    confined,
    refuse_voxel_type,
    shape_text,
)
from pipeline.io.scan.names import ITK_IO

_ITK_COMPLEX = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)

# ITK: the header fields that hold the spacing and the axes, per format (for the messages).
_ITK_FIELDS = {".mha": ("ElementSpacing", "TransformMatrix"), ".mhd": ("ElementSpacing", "TransformMatrix"),
               ".nrrd": ("spacing (space directions or spacings)", "space directions"),
               "dicom": ("Pixel Spacing (0028,0030) or the slice spacing", "Image Orientation (Patient) (0020,0037)")}
_ITK_FIX = "fix the header or re-export the scan"


def data_layout(path: Path, fmt: str | None) -> DataLayout | None:
    """Where a MetaImage or NRRD header (``fmt``: its suffix) keeps its data; None for other formats."""
    if fmt in (".mha", ".mhd"):
        return metaimage_layout(path)
    if fmt == ".nrrd":
        return nrrd_layout(path)
    return None


def read_itk(path: Path, fmt: str, max_voxels: int) -> Scan:
    """Read a MetaImage or NRRD file (``fmt``: its suffix), its header checked first."""
    try:
        layout = data_layout(path, fmt)
    except OSError as exc:
        raise cannot_read(path, "the header", exc) from None
    names, fld = (layout.files, layout.field) if layout is not None else ([], "")
    files: list[Path] = []
    for name in names:  # every data file inside the header's folder, and there
        data = confined(path, fld, name)
        if not data.is_file():
            keep = ".raw/.zraw file next to the .mhd" if fmt == ".mhd" else "data file next to the header"
            raise DataError(f"{path}: its data file {name} ({fld} in the header) is missing; keep the {keep} under "
                            "that name")
        files.append(data)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(ITK_IO[fmt])
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise cannot_read(path, "the header", exc) from None
    check_itk_info(path, fmt, reader, max_voxels)
    if layout is not None and layout.plain and len(files) <= 1:
        need = int(np.prod(reader.GetSize(), dtype=object)) * reader.GetNumberOfComponents() * _component_bytes(reader)
        declared = f"{shape_text(reader.GetSize())} voxels of {sitk.GetPixelIDValueAsString(reader.GetPixelID())}"
        if files:
            check_data_size(path, need, files[0].stat().st_size - layout.skip, declared,
                            f"its data file {layout.files[0]}")
        else:
            check_data_size(path, need, path.stat().st_size - (layout.offset or 0), declared,
                            "the file after its header")
    try:
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise cannot_read(path, "the image", exc) from None
    return from_itk(path, "itk", image, array)


def _component_bytes(reader: sitk.ImageFileReader) -> int:
    """Bytes per voxel component of the image a reader is about to read."""
    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    return int(probe.GetSizeOfPixelComponent())


def check_itk_info(path: Path, kind: str, reader: sitk.ImageFileReader, max_voxels: int,
                    size: tuple[int, ...] | None = None) -> None:
    """An ITK header (``ReadImageInformation``): a real voxel type, the voxel budget, a positive spacing and an
    invertible direction. ``size`` overrides the reader's (a DICOM series: one file's size times the files)."""
    if reader.GetPixelID() in _ITK_COMPLEX:
        refuse_voxel_type(path, f"voxel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())}", "complex")
    check_voxel_budget(path, size or reader.GetSize(), reader.GetNumberOfComponents(), max_voxels)
    check_itk_geometry(path, kind, reader.GetDimension(), reader.GetSpacing(), reader.GetDirection(),
                        reader.GetOrigin())


def check_itk_geometry(path: Path, kind: str, dim: int, spacing: Sequence[float], direction: Sequence[float],
                        origin: Sequence[float]) -> None:
    nd = min(dim, 3)
    spacing_field, axes_field = _ITK_FIELDS[kind]
    check_spacing(path, spacing_field, list(spacing)[:nd], _ITK_FIX)
    matrix = np.asarray(direction, dtype=float).reshape(dim, dim)[:nd, :nd]
    check_axes(path, axes_field, matrix, list(origin)[:nd], _ITK_FIX)


def from_itk(path: Path, kind: str, image: sitk.Image, array: np.ndarray) -> Scan:
    """The :class:`Scan` of an ITK image and its voxels (``GetArrayFromImage``), axes and geometry in RAS+."""
    dim = image.GetDimension()
    vector = array.ndim == dim + 1
    # GetArrayFromImage is (z, y, x[, c]); reverse the image axes, keep a component axis last.
    array = array.transpose([*range(dim - 1, -1, -1), *([dim] if vector else [])])
    nd = min(dim, 3)
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)[:nd, :nd]
    header = {
        "origin": tuple(float(v) for v in image.GetOrigin()[:nd]),
        "spacing": tuple(float(v) for v in image.GetSpacing()[:nd]),
        "direction": tuple(float(v) for v in direction.ravel()),
        "size": tuple(int(v) for v in image.GetSize()[:nd]),
    }
    return Scan(path=path, kind=kind, array=array, affine=itk_affine(header), header=header)


__all__ = ["check_itk_geometry", "check_itk_info", "data_layout", "from_itk", "read_itk"]
