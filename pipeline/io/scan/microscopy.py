"""Microscopy images (TIFF in :mod:`~pipeline.io.scan.tiff`, PNG in :mod:`~pipeline.io.scan.png`): the axis and
geometry convention, pixel sizes and their units, colour images that are grey, and the label types each holds.

**Axes.** A TIFF or PNG array is row-major, ``(Y, X)`` or ``(Z, Y, X)``: row 0 is the image's top row as a viewer
shows it, column 0 its left column, page 0 the first page. A :class:`~pipeline.io.scan.geometry.Scan` is
``(x, y[, z])``, so the reader transposes (x = column, y = row, z = page; channels last) and the writers transpose
back: an output is pixel for pixel on its input as any image viewer shows both.

**Geometry.** These formats hold a pixel size but no origin and no orientation. The affine is
``diag(spacing in mm)`` with origin 0 (x towards +R, y down the image towards +A, z along the pages towards +S):
the convention of the pipeline's importers (:mod:`pipeline.data.storage`: TIFF and PNG sources become NIfTI
``(X, Y)`` arrays with the spacing on the diagonal) and of MONAI's PIL reader, so a model trained on imported
microscopy data sees a TIFF or PNG given to ``pipeline infer`` exactly as it saw its training images (no flip by
the ``RAS`` orientation step). In ITK's LPS terms (the scan's header) the direction is ``diag(-1, -1[, 1])``.

**Pixel size** (in mm, as everywhere in the pipeline: 1 µm = 0.001 mm), as each file states it, and written back
the same way:

- OME-TIFF: ``PhysicalSizeX/Y/Z`` of the first ``Pixels`` element with ``PhysicalSizeX/Y/ZUnit`` (default µm);
- ImageJ TIFF: ``XResolution``/``YResolution`` in pixels per the description's ``unit``, the z step ``spacing``;
- other TIFF: ``XResolution``/``YResolution`` with ``ResolutionUnit`` inch or centimetre;
- PNG: the ``pHYs`` chunk in pixels per metre.

What a file does not state follows the rule of microscopy tools (tifffile, napari, scikit-image, MONAI: one pixel
is one unit): no pixel size at all (or only a unitless one: TIFF ``ResolutionUnit`` NONE outside ImageJ, PNG
``pHYs`` unit 0, an ImageJ unit of ``pixel``) gives 1 mm, the pipeline's unit, as the importers default to; a
missing y (x) size is the x (y) size; a z-stack without a z step gets cubic voxels (z = the x size). Pixel sizes
that are zero, negative or not finite, and units that are not lengths, are refused.

**Colour.** A colour (RGB, RGBA) image whose colour channels are equal everywhere is grey saved as colour (the
2018 Data Science Bowl ships its fluorescence images as RGBA PNGs): it is read as one grey channel, alpha dropped.
Any other colour image is refused, naming the file: the network takes grey values.

**Labels.** uint8 when the largest id is at most 255, else uint16 (PNG and TIFF) or uint32 (TIFF; an ImageJ TIFF,
which has no uint32, gets float32, exact up to 2**24, as ImageJ's own label tools write it); a PNG refuses more
than 65535 ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError
from pipeline.io.scan.geometry import Scan, itk_affine
from pipeline.io.scan.limits import check_spacing

DEFAULT_PIXEL_MM = 1.0  # one pixel = one unit, the pipeline's unit (mm), when a file states no pixel size
PIXEL_FIX = "fix the pixel size in the file (or remove it: then one pixel is 1 mm)"

# mm per unit, by the names OME (UnitsLength), ImageJ and TIFF give them; looked up as written, then lower case.
_UNITS_MM = {
    "km": 1e6, "m": 1e3, "dm": 1e2, "cm": 10.0, "mm": 1.0, "µm": 1e-3, "nm": 1e-6, "pm": 1e-9, "Å": 1e-7,
    "in": 25.4, "thou": 0.0254,
}
_ALIASES = {
    "um": "µm", "μm": "µm", "\\u00b5m": "µm", "micron": "µm", "microns": "µm", "micrometer": "µm",
    "micrometre": "µm", "nanometer": "nm", "nanometre": "nm", "millimeter": "mm", "millimetre": "mm",
    "centimeter": "cm", "centimetre": "cm", "meter": "m", "metre": "m", "inch": "in", "inches": "in",
    "angstrom": "Å", "å": "Å",
}
_UNITLESS = {"", "pixel", "pixels", "px", "reference frame", "none"}

# The label types each format holds, the smallest that fits the largest id first.
LABEL_TYPES = {"tiff": (np.uint8, np.uint16, np.uint32), "imagej": (np.uint8, np.uint16, np.float32),
               "png": (np.uint8, np.uint16)}
_FLOAT_EXACT = 2**24  # float32 holds every integer up to here


@dataclass
class PixelSize:
    """How a microscopy file states its pixel size: what its writer writes back.

    Attributes:
        flavour: ``"ome"``, ``"imagej"`` or ``"plain"`` (TIFF), ``"png"``.
        fields: the values as stored, by flavour: OME ``PhysicalSize*`` attributes (strings); ImageJ ``unit``,
            ``spacing``, ``resolution`` ((num, den), (num, den)) and ``resolutionunit``; plain TIFF ``resolution``
            and ``resolutionunit``; PNG ``pHYs`` (pixels per unit x, y, unit).
    """

    flavour: str
    fields: dict[str, Any] = field(default_factory=dict)


def unit_mm(path: Path, what: str, unit: Any) -> float | None:
    """Millimetres per ``unit`` (a length unit's name), or None for a unitless one (``pixel``).

    Raises:
        DataError: naming the file, the field (``what``) and the unit, when it is not a length this module knows.
    """
    name = str(unit).strip()
    if name.lower() in _UNITLESS:
        return None
    key = name if name in _UNITS_MM else _ALIASES.get(name.lower(), _ALIASES.get(name, name.lower()))
    if key not in _UNITS_MM:
        known = ", ".join(_UNITS_MM)
        raise DataError(f"{path}: {what} is {name!r}, not a unit of length this reader knows ({known}, or pixel "
                        f"for none); {PIXEL_FIX}")
    return _UNITS_MM[key]


def pixel_spacing(path: Path, what: str, sizes: Sequence[float | None], mm: float | None,
                  nd: int) -> tuple[float, ...]:
    """The spacing (mm, x, y[, z]) from the pixel sizes a file states in a unit of ``mm`` millimetres.

    ``sizes`` are x, y, z in the file's unit (None where not stated); ``mm`` None means unitless (ignored). The
    defaults are the module's: y = x (and x = y), z = x, and 1 mm when nothing is stated.

    Raises:
        DataError: a stated size is zero, negative or not finite (named with ``what``, in the file's unit).
    """
    stated = [s for s in sizes[:nd] if s is not None]
    if mm is None or not stated:
        return (DEFAULT_PIXEL_MM,) * nd
    check_spacing(path, what, stated, PIXEL_FIX)
    x, y = sizes[0], sizes[1]
    x = y if x is None else x
    y = x if y is None else y
    z = sizes[2] if len(sizes) > 2 and sizes[2] is not None else x
    return tuple(float(v) * mm for v in (x, y, z)[:nd])


def number(path: Path, what: str, value: Any) -> float:
    """A header value as a float (NaN and infinity pass: :func:`pixel_spacing` names them)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {what} is {str(value)[:80]!r}, not a number; {PIXEL_FIX}") from None


def microscopy_scan(path: Path, kind: str, array: np.ndarray, spacing: Sequence[float],
                    pixel_size: PixelSize) -> Scan:
    """The :class:`Scan` of a microscopy image already in ``(x, y[, z])[, c]`` order, on ``diag(spacing)``."""
    nd = len(spacing)
    header = {
        "origin": (0.0,) * nd,
        "spacing": tuple(float(s) for s in spacing),
        "direction": tuple(float(v) for v in np.diag([-1.0, -1.0, 1.0][:nd]).ravel()),
        "size": tuple(int(s) for s in array.shape[:nd]),
        "microscopy": pixel_size,
    }
    return Scan(path=path, kind=kind, array=array, affine=itk_affine(header), header=header)


def grey(path: Path, array: np.ndarray, axis: int, what: str) -> np.ndarray:
    """A colour image (colour samples on ``axis``: R, G, B[, alpha]) as its one grey channel when R, G and B are
    equal at every pixel (grey saved as colour); alpha is dropped.

    Raises:
        DataError: the colours differ somewhere: naming the file and what to do.
    """
    samples = np.moveaxis(array, axis, -1)
    first = samples[..., 0]
    for k in range(1, min(samples.shape[-1], 3)):
        if not np.array_equal(first, samples[..., k]):
            raise DataError(f"{path}: {what}: a colour image whose red, green and blue differ (not grey saved as "
                            "colour); the network takes grey values: convert the image to grey (or save the one "
                            "channel to segment) first")
    return first


def native(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order, booleans (1-bit images) as uint8."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


def label_type(labels: np.ndarray, largest: int, kind: str, target: Path) -> np.ndarray:
    """``labels`` (uint8, uint16 or uint32 by :func:`~pipeline.io.scan.write.label_array`) in the smallest type
    ``kind`` (``"tiff"``, ``"imagej"``, ``"png"``) holds for ids up to ``largest``.

    Raises:
        DataError: the format holds no type for ids this large (naming the target and what to do).
    """
    for dtype in LABEL_TYPES[kind]:
        top = _FLOAT_EXACT if dtype == np.float32 else np.iinfo(dtype).max
        if largest <= top:
            return labels if labels.dtype == dtype else labels.astype(dtype)
    what = {"png": "a PNG holds at most 16-bit (65535) label ids",
            "imagej": f"an ImageJ TIFF holds label ids up to {_FLOAT_EXACT} (as float32)",
            "tiff": "a TIFF holds at most 32-bit label ids"}[kind]
    raise DataError(f"cannot write {target}: the labels go up to id {largest}, but {what}; write the labels as "
                    "OME-TIFF (.ome.tif) or NIfTI (.nii.gz) instead")


__all__ = ["DEFAULT_PIXEL_MM", "LABEL_TYPES", "PixelSize", "grey", "label_type", "microscopy_scan", "native",
           "number", "pixel_spacing", "unit_mm"]
