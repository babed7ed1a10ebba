"""Microscopy formats in, label maps out on the same pixels: TIFF (plain, ImageJ, OME) and PNG, their pixel sizes
read and written back, grey saved as colour, instance label maps above 255 ids in every format, and the header
checks (voxel budget, pixel sizes, colour)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.errors import DataError
from pipeline.io.scan import SCAN_SUFFIXES, label_array, output_name, read_scan, scan_suffix, write_labels
from pipeline.io.scan.png import png_header
from tests.utils import write_nifti

YX = (5, 7)  # rows, columns: all sizes differ so any axis mix-up shows
ZYX = (3, 5, 7)


def image(shape=YX, dtype=np.uint16, scale: int = 1000) -> np.ndarray:
    """A row-major image whose values tell their index (modulo the type's range)."""
    values = np.arange(int(np.prod(shape))).reshape(shape) * scale
    return (values if dtype == np.float32 else values % (np.iinfo(dtype).max + 1)).astype(dtype)


def ome_pixels(path: Path) -> dict[str, str]:
    with tifffile.TiffFile(str(path)) as tif:
        root = ET.fromstring(tif.ome_metadata)
    return next(e for e in root.iter() if e.tag.endswith("Pixels")).attrib


def tags(path: Path) -> dict[str, object]:
    with tifffile.TiffFile(str(path)) as tif:
        return {t.name: t.value for t in tif.pages[0].tags.values()}


def png_with_phys(path: Path, data: np.ndarray, ppm: tuple[int, int] | None) -> Path:
    """A grey PNG; ``ppm``: its pHYs in pixels per metre (Pillow writes it from a dpi)."""
    dpi = None if ppm is None else tuple(v * 0.0254 for v in ppm)
    Image.fromarray(data).save(str(path), **({"dpi": dpi} if dpi else {}))
    return path


# ------------------------------------------------------------------------------------------------ names


def test_suffixes_and_output_names_keep_the_file_name_and_format(tmp_path: Path) -> None:
    for name, fmt in [("a.tif", ".tif"), ("a.TIFF", ".tiff"), ("cells.ome.tif", ".ome.tif"),
                      ("c.OME.TIFF", ".ome.tiff"), ("n.png", ".png")]:
        assert scan_suffix(name) == fmt and fmt in SCAN_SUFFIXES
    assert scan_suffix(".tif") is None and scan_suffix("x.tif.bak") is None
    assert output_name("d/cells.ome.tif", "_seg") == "cells_seg.ome.tif"
    assert output_name("stack.tiff") == "stack.tiff" and output_name("s.1.TIF", "_x") == "s.1_x.TIF"
    assert output_name("nuclei.PNG", "_seg") == "nuclei_seg.PNG"


# ------------------------------------------------------------------------------------------------ TIFF


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_single_page_tiff_round_trip_keeps_pixels_and_resolution(tmp_path: Path, dtype) -> None:
    """(Y, X) in, (x, y) scan on diag(pixel size) out (row 0 at y = 0); labels written back as (Y, X) with the
    input's resolution tags."""
    data = image(YX, dtype)
    src = tmp_path / "img.tif"
    tifffile.imwrite(str(src), data, photometric="minisblack", metadata=None, resolution=((20000, 1), (10000, 1)),
                     resolutionunit="CENTIMETER")
    scan = read_scan(src)
    assert scan.kind == "tiff" and scan.spatial_dims == 2 and scan.array.dtype == dtype
    assert np.array_equal(scan.array, data.T)  # x = column, y = row
    np.testing.assert_allclose(scan.affine, np.diag([5e-4, 1e-3, 1.0, 1.0]))  # 1/20000 cm, 1/10000 cm, in mm
    assert np.asarray(scan.array, dtype=np.float32).max() == float(data.max())  # uint16 -> float32 exact
    labels = (scan.array > scan.array.mean()).astype(np.uint8)
    out = write_labels(scan, labels, tmp_path / "out" / output_name(src, "_seg"))
    assert out.name == "img_seg.tif"
    assert np.array_equal(tifffile.imread(str(out)), labels.T)
    written = tags(out)
    assert written["XResolution"] == (20000, 1) and written["YResolution"] == (10000, 1)
    assert int(written["ResolutionUnit"]) == 3
    np.testing.assert_allclose(read_scan(out).affine, scan.affine)


def test_multi_page_tiff_is_a_z_stack(tmp_path: Path) -> None:
    """Pages without metadata are z; the z step, which a plain TIFF cannot state, is the x pixel size."""
    data = image(ZYX)
    src = tmp_path / "stack.tiff"
    with tifffile.TiffWriter(str(src)) as tif:
        for page in data:
            tif.write(page, photometric="minisblack", metadata=None, resolution=(2000.0, 2000.0),
                      resolutionunit="CENTIMETER")
    scan = read_scan(src)
    assert scan.spatial_shape == (7, 5, 3) and np.array_equal(scan.array, data.transpose(2, 1, 0))
    np.testing.assert_allclose(np.diag(scan.affine)[:3], [5e-3, 5e-3, 5e-3])
    labels = np.zeros(scan.spatial_shape, np.uint8)
    labels[6, 0, 2] = 1  # last column, first row, last page
    out = write_labels(scan, labels, tmp_path / "out" / "stack.tiff")
    back = tifffile.imread(str(out))
    assert back.shape == ZYX and back[2, 0, 6] == 1 and back.sum() == 1


@pytest.mark.parametrize(("unit", "mm"), [(None, 1e-3), ("µm", 1e-3), ("nm", 1e-6)])
def test_ome_tiff_physical_size_in_its_units_is_kept(tmp_path: Path, unit: str | None, mm: float) -> None:
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    if unit is not None:
        meta.update({f"PhysicalSize{a}Unit": unit for a in "XYZ"})
    src = tmp_path / "cells.ome.tif"
    tifffile.imwrite(str(src), image(ZYX), ome=True, photometric="minisblack", metadata=meta)
    scan = read_scan(src)
    assert scan.spatial_shape == (7, 5, 3)
    np.testing.assert_allclose(np.diag(scan.affine)[:3], np.array([0.65, 0.5, 2.0]) * mm, rtol=1e-12)
    out = write_labels(scan, (scan.array > 5000).astype(np.uint8), tmp_path / "out" / output_name(src, "_seg"))
    assert out.name == "cells_seg.ome.tif"
    written = ome_pixels(out)
    for a, v in zip("XYZ", (0.65, 0.5, 2.0), strict=True):
        assert float(written[f"PhysicalSize{a}"]) == v
        assert written.get(f"PhysicalSize{a}Unit", "µm") == (unit or "µm")
    np.testing.assert_allclose(read_scan(out).affine, scan.affine, rtol=1e-12)


def test_ome_tiff_channels_come_last(tmp_path: Path) -> None:
    data = np.stack([image(YX), image(YX, scale=7)])  # C, Y, X
    src = tmp_path / "two.ome.tif"
    tifffile.imwrite(str(src), data, ome=True, photometric="minisblack", metadata={"axes": "CYX"})
    scan = read_scan(src)
    assert scan.spatial_shape == (7, 5) and scan.array.shape == (7, 5, 2)
    assert np.array_equal(scan.array[..., 1], data[1].T)


def test_imagej_tiff_spacing_and_unit_are_kept(tmp_path: Path) -> None:
    src = tmp_path / "ij.tif"
    tifffile.imwrite(str(src), image(ZYX), imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "micron"})
    scan = read_scan(src)
    np.testing.assert_allclose(np.diag(scan.affine)[:3], [0.25e-3, 0.5e-3, 1.5e-3])
    out = write_labels(scan, np.ones(scan.spatial_shape, np.uint8), tmp_path / "out" / "ij.tif")
    with tifffile.TiffFile(str(out)) as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "micron" and tif.imagej_metadata["spacing"] == 1.5
    np.testing.assert_allclose(read_scan(out).affine, scan.affine)
    ids = np.arange(int(np.prod(scan.spatial_shape))).reshape(scan.spatial_shape) * 1000  # up to 104000
    back = read_scan(write_labels(scan, ids, tmp_path / "out" / "ids.tif"))  # ImageJ has no uint32: float32
    assert back.array.dtype == np.float32 and np.array_equal(back.array, ids)


def test_no_pixel_size_is_one_mm_per_pixel(tmp_path: Path) -> None:
    """No resolution (or a unitless one): one pixel = one unit, the pipeline's mm; nothing invented on output."""
    tif = tmp_path / "bare.tif"
    tifffile.imwrite(str(tif), image(YX, np.uint8), photometric="minisblack", metadata=None)
    png = png_with_phys(tmp_path / "bare.png", image(YX, np.uint8), None)
    for src in (tif, png):
        scan = read_scan(src)
        np.testing.assert_array_equal(scan.affine, np.eye(4))
        out = write_labels(scan, np.zeros(scan.spatial_shape, np.uint8), tmp_path / "out" / src.name)
        np.testing.assert_array_equal(read_scan(out).affine, np.eye(4))
    assert png_header(tmp_path / "out" / "bare.png").phys is None


# ------------------------------------------------------------------------------------------------ PNG


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_keeps_phys(tmp_path: Path, dtype) -> None:
    data = image(YX, dtype)
    src = png_with_phys(tmp_path / "nuclei.png", data, (2_000_000, 1_000_000))  # 0.5 µm x 1 µm
    scan = read_scan(src)
    assert scan.kind == "png" and scan.array.dtype == dtype and np.array_equal(scan.array, data.T)
    np.testing.assert_allclose(scan.affine, np.diag([5e-4, 1e-3, 1.0, 1.0]), rtol=1e-12)
    labels = (scan.array > scan.array.mean()).astype(np.uint8)
    out = write_labels(scan, labels, tmp_path / "out" / output_name(src, "_seg"))
    assert out.name == "nuclei_seg.png" and png_header(out).phys == (2_000_000, 1_000_000, 1)
    with Image.open(out) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), labels.T)


def test_rgba_png_of_grey_is_read_as_grey(tmp_path: Path) -> None:
    """DSB 2018 stores grey fluorescence images as RGBA with R = G = B: one grey channel, alpha dropped."""
    grey = image(YX, np.uint8, scale=9)
    src = tmp_path / "dsb.png"
    Image.fromarray(np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)).save(str(src))
    scan = read_scan(src)
    assert scan.array.shape == (7, 5) and np.array_equal(scan.array, grey.T)


def test_colour_png_and_tiff_are_refused_naming_the_file(tmp_path: Path) -> None:
    grey = image(YX, np.uint8, scale=9)
    rgb = np.stack([grey, grey // 2, grey], -1)
    png, tif = tmp_path / "photo.png", tmp_path / "photo.tif"
    Image.fromarray(rgb).save(str(png))
    tifffile.imwrite(str(tif), rgb, photometric="rgb")
    for src in (png, tif):
        with pytest.raises(DataError, match="colour image whose red, green and blue differ.*convert the image to grey"):
            read_scan(src)
        try:
            read_scan(src)
        except DataError as exc:
            assert str(src) in str(exc)


# ------------------------------------------------------------------------------------------------ labels


def test_label_type_follows_the_largest_id() -> None:
    assert label_array(np.array([0, 255]))[0].dtype == np.uint8
    assert label_array(np.array([True, False]))[0].dtype == np.uint8
    assert label_array(np.array([0, 256], np.int64))[0].dtype == np.uint16
    assert label_array(np.array([0, 70000], np.uint64))[0].dtype == np.uint32
    for bad in (np.array([-1, 2]), np.array([0.5]), np.array([2**32])):
        with pytest.raises(ValueError, match="labels must be"):
            label_array(bad)


@pytest.mark.parametrize("fmt", [".tif", ".ome.tif", ".png", ".nii.gz", ".mha"])
def test_instance_labels_above_255_are_kept(tmp_path: Path, fmt: str) -> None:
    """One id per nucleus: 300 ids need uint16 in every format; 70000 need uint32 (TIFF, NIfTI, ITK)."""
    if fmt in (".tif", ".ome.tif", ".png"):
        src = tmp_path / f"in{fmt}"
        if fmt == ".png":
            png_with_phys(src, image(YX), (1_000_000, 1_000_000))
        else:
            tifffile.imwrite(str(src), image(YX), photometric="minisblack", ome=fmt == ".ome.tif",
                             metadata={"axes": "YX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3} if fmt != ".tif"
                             else None)
        scan = read_scan(src)
    else:
        scan = read_scan(write_nifti(tmp_path / "in.nii.gz", image(YX).T.astype(np.float32), np.eye(4)))
    ids = np.arange(int(np.prod(scan.spatial_shape))).reshape(scan.spatial_shape) * 9  # up to 306
    out = write_labels(scan, ids, tmp_path / "out" / f"ids{fmt}")
    back = read_scan(out)
    assert back.array.dtype == np.uint16 and np.array_equal(back.array, ids)
    np.testing.assert_allclose(back.affine, scan.affine, rtol=1e-6, atol=1e-6)
    many = ids * 300  # up to 91800
    if fmt == ".png":
        with pytest.raises(DataError, match="PNG holds at most 16-bit"):
            write_labels(scan, many, tmp_path / "out" / "many.png")
        assert not (tmp_path / "out" / "many.png").exists()
    else:
        back = read_scan(write_labels(scan, many, tmp_path / "out" / f"many{fmt}"))
        assert back.array.dtype == np.uint32 and np.array_equal(back.array, many)
    if fmt == ".nii.gz":
        assert nib.load(str(out)).get_data_dtype() == np.uint16


@pytest.mark.parametrize("fmt", [".tif", ".ome.tif", ".png"])
def test_same_labels_give_identical_bytes(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / f"in{fmt}"
    if fmt == ".png":
        png_with_phys(src, image(YX, np.uint8), (3_000_000, 3_000_000))
    else:
        tifffile.imwrite(str(src), image(YX), photometric="minisblack", ome=fmt == ".ome.tif")
    scan = read_scan(src)
    labels = (scan.array > 9000).astype(np.uint8)
    a = write_labels(scan, labels, tmp_path / "a" / f"x{fmt}").read_bytes()
    assert a == write_labels(scan, labels, tmp_path / "b" / f"x{fmt}").read_bytes()


def test_tiff_writer_drift_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.tif"
    tifffile.imwrite(str(src), image(YX), photometric="minisblack", metadata=None, resolution=(1000.0, 1000.0),
                     resolutionunit="CENTIMETER")
    scan = read_scan(src)
    write = tifffile.imwrite
    monkeypatch.setattr(tifffile, "imwrite", lambda path, data, **kw: write(path, data, **{**kw, "resolution": None}))
    with pytest.raises(DataError, match=r"geometry drift writing .*out\.tif: pixel size"):
        write_labels(scan, np.zeros(scan.spatial_shape, np.uint8), tmp_path / "o" / "out.tif")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []


# ------------------------------------------------------------------------------------------------ header checks


def test_voxel_budget_refuses_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(str(tif), image(ZYX), photometric="minisblack")
    png = png_with_phys(tmp_path / "big.png", image(YX), None)

    def never(*args, **kwargs):
        raise AssertionError("pixels decoded before the budget was checked")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", never)
    with pytest.raises(DataError, match=r"7x5x3 = 105 voxels, more than the budget of 100 .*--max-voxels"):
        read_scan(tif, max_voxels=100)
    with pytest.raises(DataError, match=r"big\.png: the header declares 7x5 = 35 voxels, more than the budget of 30"):
        read_scan(png, max_voxels=30)


def test_pixel_sizes_not_positive_finite_or_in_no_known_unit_are_refused(tmp_path: Path) -> None:
    ome_nan = {"ome": True, "metadata": {"axes": "YX", "PhysicalSizeX": "NaN"}}
    ome_unit = {"ome": True, "metadata": {"axes": "YX", "PhysicalSizeX": 1, "PhysicalSizeXUnit": "furlong"}}
    zero = {"metadata": None, "resolution": ((0, 1), (5, 1)), "resolutionunit": "CENTIMETER"}
    cases = {
        "nan.ome.tif": (ome_nan, "PhysicalSizeX/Y/Z"),
        "unit.ome.tif": (ome_unit, "PhysicalSizeXUnit is 'furlong', not a unit of length"),
        "zero.tif": (zero, r"XResolution/YResolution .* = \(inf, 0\.2\): voxel sizes must be positive and finite"),
    }
    for name, (options, message) in cases.items():
        tifffile.imwrite(str(tmp_path / name), image(YX, np.uint8), photometric="minisblack", **options)
        with pytest.raises(DataError, match=message):
            read_scan(tmp_path / name)
    png = png_with_phys(tmp_path / "zero.png", image(YX, np.uint8), None)
    raw = png.read_bytes()
    payload = b"pHYs" + struct.pack(">IIB", 0, 1000, 1)
    chunk = struct.pack(">I", 9) + payload + struct.pack(">I", zlib.crc32(payload))
    png.write_bytes(raw[:33] + chunk + raw[33:])
    with pytest.raises(DataError, match=r"zero\.png: the pixel size from pHYs \(0, 1000 pixels per metre\)"):
        read_scan(png)


def test_time_series_and_palette_tiffs_are_refused(tmp_path: Path) -> None:
    tifffile.imwrite(str(tmp_path / "t.ome.tif"), np.zeros((3, 2, 5, 6), np.uint8), ome=True,
                     metadata={"axes": "TZYX"})
    with pytest.raises(DataError, match="a time series of 3 time points; save one time point per file"):
        read_scan(tmp_path / "t.ome.tif")
    tifffile.imwrite(str(tmp_path / "p.tif"), np.zeros(YX, np.uint8), photometric="palette",
                     colormap=np.zeros((3, 256), np.uint16), metadata=None)
    with pytest.raises(DataError, match="photometric PALETTE: an indexed-colour image"):
        read_scan(tmp_path / "p.tif")


def ome_xml(*planes: tuple[str, str]) -> str:
    """OME-XML of a 7x5 uint8 image of ``len(planes)`` z planes, each in the file (file name, UUID) given."""
    data = "".join(f'<TiffData IFD="{0 if uid == "urn:uuid:self" else k}" FirstZ="{k}" PlaneCount="1">'
                   f'<UUID FileName="{name}">{uid}</UUID></TiffData>' for k, (name, uid) in enumerate(planes))
    return ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
            'UUID="urn:uuid:self"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" '
            f'SizeX="7" SizeY="5" SizeZ="{len(planes)}" SizeC="1" SizeT="1" PhysicalSizeX="0.5" '
            f'PhysicalSizeY="0.5"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>{data}</Pixels></Image></OME>')


def test_ome_tiff_spread_over_other_files_is_refused_unopened(tmp_path: Path) -> None:
    """A renamed single-file OME-TIFF (its TiffData UUID is its own) is read; one whose planes live in other files
    (multi-file OME, Micro-Manager) is refused before tifffile would open them."""
    renamed = tmp_path / "renamed.ome.tif"
    tifffile.imwrite(str(renamed), image(YX, np.uint8), description=ome_xml(("original.ome.tif", "urn:uuid:self")),
                     metadata=None)
    scan = read_scan(renamed)
    assert scan.spatial_shape == (7, 5) and np.diag(scan.affine)[0] == 5e-4
    spread = tmp_path / "spread.ome.tif"
    tifffile.imwrite(str(spread), image(YX, np.uint8), metadata=None,
                     description=ome_xml(("spread.ome.tif", "urn:uuid:self"), ("../b.ome.tif", "urn:uuid:other")))
    with pytest.raises(DataError, match=r"spread\.ome\.tif: its OME-XML spreads the image over other files "
                                        r"\(\.\./b\.ome\.tif\)"):
        read_scan(spread)


@pytest.mark.parametrize("compression", ["lzw", "zstd"])
def test_compressed_tiffs_from_microscopes_are_read(tmp_path: Path, compression: str) -> None:
    """LZW (Fiji, many acquisition programs) and zstd need imagecodecs, a dependency: read like any TIFF."""
    data = (np.arange(40 * 50) % 4000).astype(np.uint16).reshape(40, 50)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, data, compression=compression, resolution=(2.0, 2.0), resolutionunit="CENTIMETER")
    scan = read_scan(path)
    np.testing.assert_array_equal(scan.array, data.T)
    np.testing.assert_allclose(np.diag(scan.affine)[:2], [5.0, 5.0])  # 2 px/cm = 5 mm per pixel
