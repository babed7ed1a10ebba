"""PNG (``.png``): 8- and 16-bit grey images read with Pillow, their ``pHYs`` pixel size, and label maps written the
same way (uint8 or uint16, the input's ``pHYs``), read back and checked before the rename.

The conventions (axes, geometry, pixel sizes, colour, label types) are :mod:`~pipeline.io.scan.microscopy`'s.
Before a pixel is decoded the file's chunks are walked (their headers only): a PNG signature and ``IHDR``, every
chunk inside the file up to ``IEND`` (a cut file is refused as truncated), the voxel budget, no 16-bit colour or
grey-with-alpha (Pillow reads only 8 bits of those) and a ``pHYs`` pixel size that is positive and finite. RGB,
RGBA and palette images are read as grey when their colours are equal everywhere, else refused.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from pipeline.errors import DataError
from pipeline.io.atomic import atomic_path
from pipeline.io.scan.geometry import Scan, drift_error
from pipeline.io.scan.limits import cannot_read, check_data_size, check_voxel_budget, shape_text
from pipeline.io.scan.microscopy import PixelSize, grey, label_type, microscopy_scan, native, pixel_spacing

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_AFTER_IHDR = 8 + 12 + 13  # the signature, then IHDR: length, type, 13 bytes of data, CRC
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type: grey, RGB, palette, grey + alpha, RGBA
_COLOUR_NAMES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey with alpha", 6: "RGBA"}
_MM_PER_METRE = 1000.0
_ATOL = 1e-6  # relative to the smallest pixel size


@dataclass(frozen=True)
class PngHeader:
    """What a PNG's chunk headers say: ``IHDR`` and ``pHYs`` (pixels per unit x, y and the unit, 1 = metre)."""

    width: int
    height: int
    depth: int
    colour: int
    phys: tuple[int, int, int] | None


def png_header(path: Path) -> PngHeader:
    """Walk a PNG's chunks (headers only, data skipped but for ``IHDR`` and ``pHYs``) up to ``IEND``.

    Raises:
        DataError: not a PNG (no signature, no ``IHDR`` first), a chunk that runs past the end of the file or no
            ``IEND`` (truncated), an ``IHDR`` with a zero size or an unknown colour type.
    """
    size = path.stat().st_size
    ihdr: tuple[int, ...] | None = None
    phys = None
    with open(path, "rb") as fh:
        if fh.read(8) != SIGNATURE:
            raise DataError(f"{path}: not a PNG file (no PNG signature); re-export or re-copy the image")
        pos = 8
        while True:
            head = fh.read(8)
            if len(head) < 8:
                check_data_size(path, pos + 12, size, f"a chunk at byte {pos} (the file ends before IEND)")
            length, kind = struct.unpack(">I4s", head)
            check_data_size(path, pos + 12 + length, size, f"chunk {kind.decode('latin-1')!r} of {length} bytes "
                            f"at byte {pos}")
            if ihdr is None and kind != b"IHDR":
                raise DataError(f"{path}: not a PNG file (its first chunk is not IHDR); re-export the image")
            if kind == b"IHDR" and length == 13:
                ihdr = struct.unpack(">IIBBBBB", fh.read(13))
            elif kind == b"pHYs" and length == 9:
                phys = struct.unpack(">IIB", fh.read(9))
            else:
                fh.seek(length, 1)
            fh.seek(4, 1)  # the CRC
            pos += 12 + length
            if kind == b"IEND":
                break
    assert ihdr is not None
    width, height, depth, colour = ihdr[:4]
    if width == 0 or height == 0 or colour not in _CHANNELS:
        raise DataError(f"{path}: IHDR declares a {width}x{height} image of colour type {colour}: not a valid PNG; "
                        "re-export the image")
    return PngHeader(width, height, depth, colour, phys)


def spacing_of(path: Path, header: PngHeader) -> tuple[float, float]:
    """The pixel size (mm, x and y) of a ``pHYs`` in pixels per metre; 1 mm without one (or with unit 0)."""
    if header.phys is None:
        return pixel_spacing(path, "pHYs", [None, None], None, 2)  # type: ignore[return-value]
    px, py, unit = header.phys
    sizes = [1.0 / px if px else float("inf"), 1.0 / py if py else float("inf")]
    what = f"the pixel size from pHYs ({px}, {py} pixels per {'metre' if unit == 1 else 'unknown unit'}), in m"
    return pixel_spacing(path, what, sizes, _MM_PER_METRE if unit == 1 else None, 2)  # type: ignore[return-value]


def read_png(path: Path, max_voxels: int | None) -> Scan:
    """Read a PNG as a 2D grey :class:`Scan`, its chunk headers checked first."""
    header = png_header(path)
    check_voxel_budget(path, (header.width, header.height), _CHANNELS[header.colour], max_voxels)
    if header.depth == 16 and header.colour in (2, 4, 6):
        raise DataError(f"{path}: a 16-bit {_COLOUR_NAMES[header.colour]} PNG, of which Pillow reads only 8 bits; "
                        "the network takes grey values: save the image as 16-bit grey (no alpha) first")
    spacing = spacing_of(path, header)
    try:
        # The plugin class directly: the voxel budget above replaces Pillow's own (global) pixel limit.
        with PngImagePlugin.PngImageFile(str(path)) as image:
            image.load()
            if image.mode in ("P", "PA"):
                image = image.convert("RGBA")
            array = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for truncated or corrupt data
        raise cannot_read(path, "the PNG image", exc) from None
    if array.ndim == 3:
        colour = _COLOUR_NAMES[header.colour]
        array = array[..., 0] if array.shape[-1] == 2 else grey(path, array, -1, f"colour type {colour}")
    if array.shape != (header.height, header.width):
        raise DataError(f"{path}: decoded {shape_text(array.shape)} pixels, but IHDR declares "
                        f"{header.height}x{header.width}; re-export the image")
    if header.depth == 16 and array.dtype != np.uint16:
        array = array.astype(np.uint16)
    return microscopy_scan(path, "png", native(array).T, spacing, PixelSize("png", {"pHYs": header.phys}))


def write_png(scan: Scan, labels: np.ndarray, largest: int, target: Path, fmt: str) -> None:
    """Write a 2D label map ``(x, y)`` as an 8- or 16-bit grey PNG, atomically, with the scan's ``pHYs`` (a PNG
    scan's as read, else from its spacing); read back and compared first."""
    if labels.ndim != 2:
        raise DataError(f"cannot write {target}: a PNG holds 2D images, the labels are {labels.ndim}D "
                        f"({shape_text(labels.shape)}); write them as TIFF or NIfTI")
    data = np.ascontiguousarray(label_type(labels, largest, "png", target).T)  # (y, x)
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, format="PNG")
    encoded = buffer.getvalue()
    phys = _output_phys(scan)
    if phys is not None:  # right after IHDR, exactly as read (Pillow writes pHYs only from a dpi, unit metre)
        payload = b"pHYs" + struct.pack(">IIB", *phys)
        chunk = struct.pack(">I", 9) + payload + struct.pack(">I", zlib.crc32(payload))
        encoded = encoded[:_AFTER_IHDR] + chunk + encoded[_AFTER_IHDR:]
    with atomic_path(target, suffix=fmt, size=len(encoded)) as tmp:
        tmp.write_bytes(encoded)
        _verify(scan, tmp, target, data.dtype)


def _output_phys(scan: Scan) -> tuple[int, int, int] | None:
    own = scan.header.get("microscopy") if isinstance(scan.header, dict) else None
    if scan.kind == "png" and isinstance(own, PixelSize):
        return own.fields.get("pHYs")
    spacing = np.linalg.norm(scan.affine[:3, :2], axis=0)
    if np.allclose(spacing, 1.0, rtol=1e-9, atol=0):  # no pixel size to state
        return None
    px, py = (round(_MM_PER_METRE / float(s)) for s in spacing)
    return int(px), int(py), 1


def _verify(scan: Scan, written: Path, target: Path, dtype: np.dtype) -> None:
    header = png_header(written)
    depth = 16 if dtype == np.uint16 else 8
    shape = (header.width, header.height)
    if shape != scan.spatial_shape:
        raise drift_error(target, scan, "shape", shape, scan.spatial_shape)
    if (header.colour, header.depth) != (0, depth):
        raise DataError(f"writing {target}: the file holds {_COLOUR_NAMES.get(header.colour)} {header.depth}-bit "
                        f"pixels, not {depth}-bit grey; nothing was written")
    spacing = spacing_of(written, header)
    affine = np.diag([*spacing, 1.0, 1.0])
    if not np.allclose(affine, scan.affine, rtol=1e-6, atol=_ATOL * min(spacing)):
        raise drift_error(target, scan, "pixel size or geometry (PNG holds no origin or orientation)",
                          affine, scan.affine)


__all__ = ["png_header", "read_png", "spacing_of", "write_png"]
