"""TIFF (``.tif``, ``.tiff``, ``.ome.tif``, ``.ome.tiff``) with tifffile: reading a 2D image, a z-stack or their
channels (OME or ImageJ axes), and writing label maps in the input's flavour (OME-TIFF, ImageJ or plain TIFF)
with its pixel size, read back and checked before the rename.

The conventions (axes, geometry, pixel sizes, colour, label types) are :mod:`~pipeline.io.scan.microscopy`'s.
Before a pixel is read: the file holds one image (not several series, nor an OME image spread over other files);
its axes are Y, X and at most one page axis (Z, or tifffile's I/Q for pages without metadata) and one channel
axis (C, or samples that are not colour); no time axis; a real voxel type; the voxel budget; a compression
tifffile can decode here; strips inside the file and, uncompressed, as long as the pixels they hold; a pixel size
that is positive and finite in a known unit.
"""

from __future__ import annotations

import hashlib
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from pipeline.errors import DataError
from pipeline.io.atomic import atomic_path
from pipeline.io.scan.geometry import Scan, drift_error
from pipeline.io.scan.limits import cannot_read, check_data_size, check_voxel_budget, refuse_voxel_type, shape_text
from pipeline.io.scan.microscopy import (
    PixelSize,
    grey,
    label_type,
    microscopy_scan,
    native,
    number,
    pixel_spacing,
    unit_mm,
)
from pipeline.io.scan.names import OME_SUFFIXES

_FLAGS = {"is_mmstack": False, "is_ndtiff": False}  # formats whose series tifffile assembles from other files
_COLOUR = {2, 5, 6, 8, 9, 10}  # photometric RGB, CMYK (separated), YCbCr, CIELab, ICCLab, ITULab
_ALPHA = {1, 2}  # extra samples: associated, unassociated alpha
_RESOLUTION_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}  # ResolutionUnit inch, centimetre (4, 5: tifffile's mm, µm)
_AXES_FIX = "save one 2D image or z-stack (with its channels) per file"
_ATOL = 1e-6  # relative to the smallest pixel size


def read_tiff(path: Path, max_voxels: int | None) -> Scan:
    """Read a TIFF file as a :class:`Scan`, its header checked first (nothing is decoded for a refusal)."""
    try:
        with tifffile.TiffFile(str(path), **_FLAGS) as tif:
            layout = _inspect(path, tif, max_voxels)
            try:
                data = np.asarray(tif.series[0].asarray())
            except Exception as exc:  # noqa: BLE001 - tifffile and its codecs raise many types for corrupt data
                raise cannot_read(path, "the TIFF image", exc) from None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - not a TIFF, or a broken structure (TiffFileError, OSError, ...)
        raise cannot_read(path, "the TIFF header", exc) from None
    return _to_scan(path, data, layout)


def _to_scan(path: Path, data: np.ndarray, layout: dict[str, Any]) -> Scan:
    axes = layout["axes"]
    data = data.reshape(layout["shape"])
    if "S" in axes:  # alpha samples dropped; colour samples grey or refused
        s = axes.index("S")
        data = np.take(data, range(layout["samples"]), axis=s) if layout["samples"] < data.shape[s] else data
        if layout["colour"] or layout["samples"] == 1:  # grey, or one grey sample left beside alpha
            data = grey(path, data, s, f"photometric {layout['photometric']}") if layout["colour"] else data.take(0, s)
            axes = axes.replace("S", "")
    order = [axes.index(a) for a in "XYZ" if a in axes] + [i for i, a in enumerate(axes) if a in "CS"]
    return microscopy_scan(path, "tiff", native(data.transpose(order)), layout["spacing"], layout["pixel_size"])


def _inspect(path: Path, tif: tifffile.TiffFile, max_voxels: int | None) -> dict[str, Any]:
    """What reading needs, every header check done: axes (Y, X, Z, C, S), shape, samples kept, colour, spacing."""
    page = tif.pages[0]
    ome = _ome_pixels(path, tif) if tif.is_ome else None
    if len(tif.series) != 1:
        raise DataError(f"{path}: holds {len(tif.series)} images (series) of different shapes or kinds; "
                        f"{_AXES_FIX}")
    series = tif.series[0]
    axes, shape = _axes(path, series.axes, tuple(int(n) for n in series.shape))
    dtype = np.dtype(series.dtype)
    if dtype.kind == "c":
        refuse_voxel_type(path, f"sample type {dtype}", "complex")
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        refuse_voxel_type(path, f"sample type {dtype}", "unknown")
    photometric = getattr(page.photometric, "name", str(page.photometric))
    if int(page.photometric) == 3:
        raise DataError(f"{path}: photometric PALETTE: an indexed-colour image; the network takes grey values: "
                        "convert the image to grey first")
    samples = shape[axes.index("S")] if "S" in axes else 1
    alpha = sum(1 for e in tuple(page.extrasamples or ())[-samples:] if int(e) in _ALPHA) if samples > 1 else 0
    colour = "S" in axes and int(page.photometric) in _COLOUR
    if "S" in axes and "C" in axes and not colour:
        raise DataError(f"{path}: axes {series.axes}: channels both as samples and as pages; {_AXES_FIX}")
    spatial = tuple(shape[axes.index(a)] for a in "XYZ" if a in axes)
    channels = int(np.prod([n for a, n in zip(axes, shape, strict=True) if a in "CS"], dtype=object))
    check_voxel_budget(path, spatial, channels, max_voxels)
    _check_codec(path, page)
    _check_data(path, series, spatial, dtype)
    spacing, pixel_size = _pixel_size(path, tif, page, ome, len(spatial))
    return {"axes": axes, "shape": shape, "samples": samples - alpha, "colour": colour, "photometric": photometric,
            "spacing": spacing, "pixel_size": pixel_size, "dtype": dtype}


def _axes(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """tifffile's axes (size-1 axes squeezed) with the page axis named Z; refuses time and other axes."""
    out, kept = "", []
    for a, n in zip(axes, shape, strict=True):
        if n == 1 and a not in "XY":  # an axis of one: nothing to place
            continue
        if a in "IQ":
            a = "Z"
        if a == "T" and n > 1:
            raise DataError(f"{path}: axes {axes} (shape {shape_text(shape)}): a time series of {n} time points; "
                            "save one time point per file")
        if a not in "XYZCS":
            raise DataError(f"{path}: axes {axes} (shape {shape_text(shape)}): an axis {a!r} of {n} besides Z, C, Y "
                            f"and X; {_AXES_FIX}")
        if a in out:
            raise DataError(f"{path}: axes {axes} (shape {shape_text(shape)}): more than one page axis; "
                            f"{_AXES_FIX}")
        out += a
        kept.append(n)
    if "X" not in out or "Y" not in out:
        raise DataError(f"{path}: axes {axes}: no Y and X axes; {_AXES_FIX}")
    return out, tuple(kept)


def _check_codec(path: Path, page: Any) -> None:
    try:
        tifffile.TIFF.DECOMPRESSORS[page.compression]
    except KeyError:
        name = getattr(page.compression, "name", page.compression)
        raise DataError(f"{path}: compression {name}, which tifffile cannot decode without the imagecodecs package; "
                        "install it (pip install imagecodecs) or save the TIFF uncompressed or with deflate (zip) "
                        "compression") from None


def _check_data(path: Path, series: Any, spatial: tuple[int, ...], dtype: np.dtype) -> None:
    """Strips (tiles) inside the file, and uncompressed ones as long as the pixels they hold."""
    have = path.stat().st_size
    declared = f"{shape_text(spatial)} {dtype} pixels"
    if series.dataoffset is not None:  # contiguous uncompressed data (ImageJ, tifffile): one range
        check_data_size(path, int(series.dataoffset) + int(series.nbytes), have,
                        f"{declared} stored from byte {series.dataoffset}")
        return
    end = 0
    for page in series.pages:
        if page is None:
            raise DataError(f"{path}: its OME-XML names more image planes than the file holds; re-export the file")
        key = getattr(page, "keyframe", None) or page
        counts = [int(c) for c in page.databytecounts]
        end = max([end, *(int(o) + c for o, c in zip(page.dataoffsets, counts, strict=True))])
        if int(key.compression) == 1 and int(key.bitspersample) % 8 == 0 and sum(counts) < int(key.nbytes):
            raise DataError(f"{path}: the header declares {declared} ({int(key.nbytes)} bytes per page), but the "
                            f"strips of a page hold only {sum(counts)} bytes; re-export or re-copy the image")
    check_data_size(path, end, have, f"{declared} in strips ending at byte {end}")


def _ome_pixels(path: Path, tif: tifffile.TiffFile) -> dict[str, str]:
    """The first OME ``Pixels`` element's attributes; refuses OME-XML that cannot be parsed or that spreads the
    image over other files (read before tifffile would open them)."""
    try:
        root = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError as exc:
        raise DataError(f"{path}: its OME-XML cannot be parsed ({exc}); re-export the file") from None
    own = (root.get("UUID") or "").strip()  # TiffData UUIDs equal to the root's name this file, renamed or not
    others = sorted({e.get("FileName") or (e.text or "").strip() for e in root.iter()
                     if e.tag.rsplit("}", 1)[-1] == "UUID" and (e.text or "").strip() != own})
    if others:
        raise DataError(f"{path}: its OME-XML spreads the image over other files ({', '.join(others[:3])}); a "
                        "multi-file OME-TIFF is not read: save the image as one file")
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    return dict(pixels.attrib) if pixels is not None else {}


def _resolution(page: Any) -> tuple[tuple[int, int], tuple[int, int]] | None:
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    x, y = tags["XResolution"].value, tags["YResolution"].value
    return (int(x[0]), int(x[1])), (int(y[0]), int(y[1]))


def _sizes(resolution: tuple[tuple[int, int], tuple[int, int]] | None) -> list[float | None]:
    """Pixel sizes (units per pixel) of the XResolution/YResolution rationals (pixels per unit)."""
    if resolution is None:
        return [None, None]
    return [den / num if num else float("inf") for num, den in resolution]


def _pixel_size(path: Path, tif: tifffile.TiffFile, page: Any, ome: dict[str, str] | None,
                nd: int) -> tuple[tuple[float, ...], PixelSize]:
    resolution = _resolution(page)
    unit_tag = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
    if ome is not None:  # each axis in its own unit (default µm), converted to mm
        fields = {k: v for k, v in ome.items() if k.startswith("PhysicalSize")}
        sizes: list[float | None] = []
        for a in "XYZ":
            mm = unit_mm(path, f"PhysicalSize{a}Unit", fields.get(f"PhysicalSize{a}Unit", "µm"))
            stated = fields.get(f"PhysicalSize{a}")
            sizes.append(None if stated is None or mm is None else number(path, f"PhysicalSize{a}", stated) * mm)
        return pixel_spacing(path, "OME-XML PhysicalSizeX/Y/Z (in mm)", sizes, 1.0, nd), PixelSize("ome", fields)
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        fields = {"resolution": resolution, "resolutionunit": unit_tag,
                  **{k: meta[k] for k in ("unit", "spacing") if k in meta}}
        unit = meta.get("unit")
        mm = unit_mm(path, "the ImageJ unit", unit) if unit is not None else _RESOLUTION_MM.get(unit_tag)
        z = number(path, "the ImageJ spacing", meta["spacing"]) if "spacing" in meta else None
        xy = [1.0, 1.0] if resolution is None else _sizes(resolution)
        what = f"the pixel size from XResolution/YResolution and the ImageJ spacing (in {unit or 'its unit'})"
        return pixel_spacing(path, what, [*xy, z], mm, nd), PixelSize("imagej", fields)
    fields = {"resolution": resolution, "resolutionunit": unit_tag}
    mm = _RESOLUTION_MM.get(unit_tag) if resolution is not None else None
    unit = getattr(page.tags["ResolutionUnit"].value, "name", unit_tag) if "ResolutionUnit" in page.tags else "INCH"
    what = f"the pixel size from XResolution/YResolution (1 / pixels per {unit})"
    return pixel_spacing(path, what, [*_sizes(resolution), None], mm, nd), PixelSize("plain", fields)


# ------------------------------------------------------------------------------------------------ writing


def write_tiff(scan: Scan, labels: np.ndarray, largest: int, target: Path, fmt: str) -> None:
    """Write a label map ``(x, y[, z])`` as TIFF, atomically: the scan's own flavour and pixel size fields for a
    TIFF scan (OME for an ``.ome.tif`` target), else derived from its spacing; read back and compared first."""
    pixel_size = _output_pixel_size(scan, fmt)
    kind = "imagej" if pixel_size.flavour == "imagej" else "tiff"
    data = np.ascontiguousarray(label_type(labels, largest, kind, target).T)  # (z, y, x) / (y, x)
    axes = "ZYX" if data.ndim == 3 else "YX"
    fields = pixel_size.fields
    options: dict[str, Any] = {"photometric": "minisblack", "compression": "zlib"}
    if pixel_size.flavour == "ome":
        digest = hashlib.sha256(data.tobytes() + repr(sorted(fields.items())).encode()).hexdigest()
        options.update(ome=True, metadata={"axes": axes, "UUID": f"urn:uuid:{uuid.UUID(digest[:32])}", **fields})
    else:
        if fields.get("resolution") is not None:
            options.update(resolution=fields["resolution"], resolutionunit=fields["resolutionunit"])
        if pixel_size.flavour == "imagej":
            meta = {k: fields[k] for k in ("unit", "spacing") if k in fields}
            if isinstance(meta.get("unit"), str):  # ImageJ writes its description in ASCII
                meta["unit"] = meta["unit"].replace("µ", "\\u00B5").replace("μ", "\\u00B5")
            options.update(imagej=True, metadata={"axes": axes, **meta})
        else:
            options.update(metadata=None)
    with atomic_path(target, suffix=fmt) as tmp:
        tifffile.imwrite(str(tmp), data, **options)
        _verify(scan, tmp, target, data.dtype)


def _output_pixel_size(scan: Scan, fmt: str) -> PixelSize:
    own = scan.header.get("microscopy") if isinstance(scan.header, dict) else None
    if scan.kind == "tiff" and isinstance(own, PixelSize) and (own.flavour == "ome" or fmt not in OME_SUFFIXES):
        return own
    spacing = np.linalg.norm(scan.affine[:3, : scan.spatial_dims], axis=0)
    if fmt in OME_SUFFIXES:
        fields = {f"PhysicalSize{a}": repr(float(s) * 1000) for a, s in zip("XYZ", spacing, strict=False)}
        return PixelSize("ome", {**fields, **{f"PhysicalSize{a}Unit": "µm" for a in "XYZ"[: len(spacing)]}})
    if np.allclose(spacing, 1.0, rtol=1e-9, atol=0):  # no pixel size to state
        return PixelSize("plain", {"resolution": None})
    return PixelSize("plain", {"resolution": tuple(10.0 / float(s) for s in spacing[:2]), "resolutionunit": 3})


def _verify(scan: Scan, written: Path, target: Path, dtype: np.dtype) -> None:
    with tifffile.TiffFile(str(written), **_FLAGS) as tif:
        layout = _inspect(written, tif, None)
    shape = tuple(layout["shape"][layout["axes"].index(a)] for a in "XYZ" if a in layout["axes"])
    if shape != scan.spatial_shape or "C" in layout["axes"] or "S" in layout["axes"]:
        raise drift_error(target, scan, "shape", shape, scan.spatial_shape)
    if layout["dtype"] != dtype:
        raise DataError(f"writing {target}: the file holds {layout['dtype']} labels, not {dtype}; nothing was written")
    nd = len(shape)
    affine = np.diag([*layout["spacing"], *[1.0] * (4 - nd)])
    atol = _ATOL * min(layout["spacing"])
    if not np.allclose(affine, scan.affine, rtol=1e-6, atol=atol):
        raise drift_error(target, scan, "pixel size or geometry (TIFF holds no origin or orientation)",
                          affine, scan.affine)


__all__ = ["read_tiff", "write_tiff"]
