"""Any scan format in, outputs on exactly the input's grid out: NIfTI, MetaImage, NRRD and DICOM series."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.errors import DataError
from pipeline.io.scan import (
    PROBABILITY_SCALE,
    SCAN_SUFFIXES,
    is_dicom_series,
    output_name,
    read_scan,
    remove_stale_temporaries,
    scan_suffix,
    write_labels,
    write_probabilities,
)
from tests.utils import AFFINES, make_affine, rotation, write_nifti
from tests.utils import itk_image as _itk_image
from tests.utils import write_dicom_series as _write_dicom_series

SHAPE = (7, 6, 5)  # x, y, z: all different so any axis mix-up shows
ITK_SPACING = (1.1, 0.7, 2.3)
ITK_ORIGIN = (12.5, -30.25, 41.0)
ITK_DIRECTION = rotation((1, 2, 3), 23.0)
INDICES = [(0, 0, 0), (6, 0, 0), (0, 5, 0), (0, 0, 4), (6, 5, 4), (3, 2, 1)]


def itk_image(array_xyz: np.ndarray, direction=ITK_DIRECTION, origin=ITK_ORIGIN, spacing=ITK_SPACING) -> sitk.Image:
    return _itk_image(array_xyz, direction, origin, spacing)


def write_dicom_series(folder: Path, data: np.ndarray, direction=ITK_DIRECTION, origin=ITK_ORIGIN,
                       spacing=ITK_SPACING, **kwargs) -> sitk.Image:
    return _write_dicom_series(folder, data, direction, origin, spacing, **kwargs)


def volume(shape=SHAPE) -> np.ndarray:
    """A non-symmetric int16 volume: every voxel value tells its index."""
    return np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape) * 3 - 50


def lps_to_ras(point) -> np.ndarray:
    return np.array(point, dtype=float) * np.array([-1.0, -1.0, 1.0][: len(point)])


def world(affine: np.ndarray, index) -> np.ndarray:
    return (affine @ np.array([*index, *[0] * (3 - len(index)), 1.0]))[:3]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------ names, formats


def test_suffixes_and_output_names(tmp_path: Path) -> None:
    assert scan_suffix("a/CASE.NII.GZ") == ".nii.gz" and scan_suffix("x.nii") == ".nii"
    assert [scan_suffix(f"c{s}") for s in SCAN_SUFFIXES] == list(SCAN_SUFFIXES)
    assert scan_suffix("x.raw") is None and scan_suffix("x.gz") is None and scan_suffix(".nii.gz") is None
    assert output_name("d/case.nii.gz", "_seg") == "case_seg.nii.gz"
    assert output_name("a.mha", "_seg") == "a_seg.mha" and output_name("b.mhd") == "b.mhd"
    assert output_name("v.1.nrrd", "_p") == "v.1_p.nrrd"
    (tmp_path / "ser1").mkdir()
    assert output_name(tmp_path / "ser1", "_seg") == "ser1_seg.nii.gz"
    with pytest.raises(DataError, match="not a supported scan"):
        output_name(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------------ NIfTI round trips


@pytest.mark.parametrize("key", sorted(AFFINES))
def test_nifti_round_trip_keeps_affine_qform_sform_and_codes(tmp_path: Path, key: str) -> None:
    data = volume().astype(np.float32)
    affine = AFFINES[key]
    qform = make_affine((1.3, 0.9, 2.2), rotation((0, 1, 1), 9.0), origin=(1.0, 2.0, 3.0)) if key == "anisotropic" \
        else None
    src = write_nifti(tmp_path / "case.nii.gz", data, affine, qform=qform)
    scan = read_scan(src)
    assert scan.kind == "nifti" and scan.spatial_dims == 3 and scan.spatial_shape == SHAPE
    np.testing.assert_array_equal(scan.array, data)
    np.testing.assert_allclose(scan.affine, affine, atol=1e-5)

    labels = (scan.array > 20).astype(np.uint8)
    labels[6, 5, 4] = 2  # one corner voxel: lands at the same index or the test fails
    out = write_labels(scan, labels, tmp_path / output_name(src, "_seg"))
    assert out.name == "case_seg.nii.gz"
    ref, got = nib.load(str(src)), nib.load(str(out))
    assert got.shape == SHAPE and got.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), labels)
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(got.get_qform(), ref.get_qform(), atol=1e-6)
    np.testing.assert_allclose(got.get_sform(), ref.get_sform(), atol=1e-6)
    for code in ("qform_code", "sform_code"):
        assert int(got.header[code]) == int(ref.header[code])
    if qform is not None:
        np.testing.assert_allclose(got.get_qform(), qform, atol=1e-5)
        assert not np.allclose(got.get_qform(), got.get_sform())
    assert files_in(tmp_path) == ["case.nii.gz", "case_seg.nii.gz"]


def test_nifti_codes_other_than_one_are_kept(tmp_path: Path) -> None:
    img = nib.Nifti1Image(volume(), AFFINES["oblique"])
    img.set_sform(AFFINES["oblique"], code=2)  # aligned
    img.set_qform(AFFINES["lps"], code=4)  # MNI
    nib.save(img, str(tmp_path / "c.nii"))
    scan = read_scan(tmp_path / "c.nii")
    got = nib.load(str(write_labels(scan, np.ones(SHAPE, np.uint8), tmp_path / "c_seg.nii")))
    assert (int(got.header["sform_code"]), int(got.header["qform_code"])) == (2, 4)
    np.testing.assert_allclose(got.get_qform(), AFFINES["lps"], atol=1e-5)
    np.testing.assert_allclose(got.affine, AFFINES["oblique"], atol=1e-5)


def test_2d_nifti_round_trip(tmp_path: Path) -> None:
    data = volume((9, 7)).astype(np.float32)
    affine = make_affine((0.5, 0.8, 1.0), rotation((0, 0, 1), 20.0), origin=(3.0, -2.0, 0.0))
    src = write_nifti(tmp_path / "img.nii.gz", data, affine)
    scan = read_scan(src)
    assert scan.spatial_dims == 2 and scan.spatial_shape == (9, 7)
    labels = (scan.array > 40).astype(np.uint8)
    got = nib.load(str(write_labels(scan, labels, tmp_path / "img_seg.nii.gz")))
    assert got.shape == (9, 7)
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), labels)
    np.testing.assert_allclose(got.affine, affine, atol=1e-6)
    # ...and as a 2D MetaImage: same world position of every corner
    mha = read_scan(write_labels(scan, labels, tmp_path / "img_seg.mha"))
    assert mha.spatial_shape == (9, 7)
    np.testing.assert_array_equal(mha.array, labels)
    np.testing.assert_allclose(mha.affine, affine, atol=1e-6)


def test_2d_itk_image(tmp_path: Path) -> None:
    data = volume((9, 7))
    image = itk_image(data, direction=rotation((0, 0, 1), 30.0)[:2, :2], origin=(4.0, 5.0), spacing=(0.6, 1.4))
    sitk.WriteImage(image, str(tmp_path / "s.nrrd"))
    scan = read_scan(tmp_path / "s.nrrd")
    assert scan.spatial_dims == 2 and scan.spatial_shape == (9, 7)
    np.testing.assert_array_equal(scan.array, data)
    for index in [(0, 0), (8, 0), (0, 6), (8, 6)]:
        np.testing.assert_allclose(world(scan.affine, index)[:2],
                                   lps_to_ras(image.TransformIndexToPhysicalPoint(index)), atol=1e-9)
    out = sitk.ReadImage(str(write_labels(scan, data > 60, tmp_path / "s_seg.nrrd")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(image) > 60)
    np.testing.assert_allclose(out.GetDirection(), image.GetDirection(), atol=1e-12)
    assert out.GetOrigin() == image.GetOrigin() and out.GetSize() == (9, 7)


# ------------------------------------------------------------------------------------------------ ITK formats


@pytest.mark.parametrize("fmt", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_keep_geometry_and_indices(tmp_path: Path, fmt: str) -> None:
    data = volume()
    image = itk_image(data)
    src = tmp_path / f"in{fmt}"
    sitk.WriteImage(image, str(src))
    scan = read_scan(src)
    assert scan.kind == "itk" and scan.spatial_shape == SHAPE
    np.testing.assert_array_equal(scan.array, data)
    for index in INDICES:
        np.testing.assert_allclose(world(scan.affine, index), lps_to_ras(image.TransformIndexToPhysicalPoint(index)),
                                   atol=1e-9)

    target = tmp_path / output_name(src, "_seg")
    assert write_labels(scan, scan.array > 20, target) == target
    out = sitk.ReadImage(str(target))
    assert out.GetSize() == image.GetSize() == SHAPE
    assert out.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(out.GetOrigin(), image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(out.GetSpacing(), image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(out.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), (sitk.GetArrayFromImage(image) > 20).astype(np.uint8))
    expected = ["in.raw", "in.mhd", "in_seg.mhd", "in_seg.raw"] if fmt == ".mhd" else [src.name, target.name]
    assert files_in(tmp_path) == sorted(expected)
    if fmt == ".mhd":
        assert "ElementDataFile = in_seg.raw" in target.read_text()


def test_itk_probabilities_as_nifti(tmp_path: Path) -> None:
    image = itk_image(volume())
    sitk.WriteImage(image, str(tmp_path / "in.mha"))
    scan = read_scan(tmp_path / "in.mha")
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=SHAPE).astype(np.float32)
    out = write_probabilities(scan, probs, tmp_path / output_name(tmp_path / "in.nii.gz", "_probs"))
    got = nib.load(str(out))
    assert got.shape == (*SHAPE, 3) and got.get_data_dtype() == np.uint16
    assert np.abs(got.get_fdata() - probs).max() <= 0.5 / PROBABILITY_SCALE + 1e-7
    assert (int(got.header["qform_code"]), int(got.header["sform_code"])) == (1, 1)
    for index in INDICES:
        np.testing.assert_allclose(world(got.affine, index), lps_to_ras(image.TransformIndexToPhysicalPoint(index)),
                                   atol=1e-4)


def test_nifti_probabilities_keep_qform_and_sform(tmp_path: Path) -> None:
    qform = make_affine((1.0, 1.0, 1.0), origin=(5.0, 5.0, 5.0))
    src = write_nifti(tmp_path / "c.nii.gz", volume().astype(np.float32), AFFINES["anisotropic"], qform=qform)
    scan = read_scan(src)
    probs = np.random.default_rng(1).dirichlet(np.ones(2), size=SHAPE)
    got = nib.load(str(write_probabilities(scan, probs, tmp_path / "c_probs.nii.gz")))
    assert got.shape == (*SHAPE, 2)
    np.testing.assert_allclose(got.get_fdata(), probs, atol=1e-5)
    np.testing.assert_allclose(got.get_sform(), AFFINES["anisotropic"], atol=1e-5)
    np.testing.assert_allclose(got.get_qform(), qform, atol=1e-5)
    with pytest.raises(DataError, match="class axis last"):
        write_probabilities(scan, np.moveaxis(probs, -1, 0), tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match="NIfTI"):
        write_probabilities(scan, probs, tmp_path / "c_probs.mha")


# ------------------------------------------------------------------------------------------------ DICOM


def test_dicom_series_to_nifti(tmp_path: Path) -> None:
    data = volume()
    truth = write_dicom_series(tmp_path / "ser1", data)
    assert is_dicom_series(tmp_path / "ser1") and not is_dicom_series(tmp_path)
    scan = read_scan(tmp_path / "ser1")
    assert scan.kind == "dicom" and scan.spatial_shape == SHAPE
    np.testing.assert_array_equal(scan.array, data)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ser1")))
    itk = reader.Execute()
    for index in INDICES:
        expected = lps_to_ras(itk.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(world(scan.affine, index), expected, atol=1e-9)
        np.testing.assert_allclose(expected, lps_to_ras(truth.TransformIndexToPhysicalPoint(index)), atol=1e-4)

    name = output_name(tmp_path / "ser1", "_seg")
    assert name == "ser1_seg.nii.gz"
    labels = (scan.array > 100).astype(np.uint8)
    got = nib.load(str(write_labels(scan, labels, tmp_path / name)))
    assert got.shape == SHAPE and (int(got.header["qform_code"]), int(got.header["sform_code"])) == (1, 1)
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), labels)
    np.testing.assert_allclose(got.affine, scan.affine, atol=1e-5)
    np.testing.assert_allclose(got.get_qform(), scan.affine, atol=1e-5)  # a pure rotation: qform holds it exactly
    for index in INDICES:
        np.testing.assert_allclose(world(got.affine, index), lps_to_ras(itk.TransformIndexToPhysicalPoint(index)),
                                   atol=1e-4)


def test_dicom_folder_with_two_series_or_missing_slice_is_refused(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "two", volume(), series_uid="1.2.3.4.1")
    write_dicom_series(tmp_path / "two", volume(), series_uid="1.2.3.4.2", origin=(0.0, 0.0, 100.0))
    with pytest.raises(DataError, match=r"2 DICOM series \(1\.2\.3\.4\.1, 1\.2\.3\.4\.2\)"):
        read_scan(tmp_path / "two")
    write_dicom_series(tmp_path / "gap", volume(), skip=(2,))
    with pytest.raises(DataError, match="off a regular grid"):
        read_scan(tmp_path / "gap")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no DICOM here")
    with pytest.raises(DataError, match="no DICOM"):
        read_scan(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ bad inputs


def test_truncated_and_unsupported_files_raise_data_error(tmp_path: Path) -> None:
    src = write_nifti(tmp_path / "full.nii.gz", volume().astype(np.float32), AFFINES["ras"])
    raw = gzip.decompress(src.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw)[:-40])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: cannot read .*truncated or corrupt"):
        read_scan(tmp_path / "cut.nii.gz")

    sitk.WriteImage(itk_image(volume()), str(tmp_path / "full.mha"))
    (tmp_path / "cut.mha").write_bytes((tmp_path / "full.mha").read_bytes()[:-50])
    with pytest.raises(DataError, match=r"cut\.mha: truncated: the header declares 7x6x5 voxels .* \(420 bytes\), "
                       r"but the file after its header holds only 370"):
        read_scan(tmp_path / "cut.mha")

    sitk.WriteImage(itk_image(volume()), str(tmp_path / "lonely.mhd"))
    (tmp_path / "lonely.raw").unlink()
    with pytest.raises(DataError, match=r"lonely\.mhd: its data file lonely\.raw .* is missing"):
        read_scan(tmp_path / "lonely.mhd")

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not a supported scan; expected NIfTI"):
        read_scan(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="not found"):
        read_scan(tmp_path / "missing.nrrd")


def test_wrong_label_shape_is_refused(tmp_path: Path) -> None:
    scan = read_scan(write_nifti(tmp_path / "c.nii.gz", volume(), AFFINES["lps"]))
    with pytest.raises(DataError, match=r"shape \(5, 6, 7\)"):
        write_labels(scan, np.zeros((5, 6, 7), np.uint8), tmp_path / "c_seg.nii.gz")
    assert files_in(tmp_path) == ["c.nii.gz"]


# ------------------------------------------------------------------------------------------------ drift detection


def test_tampered_nifti_header_is_caught_before_the_rename(tmp_path: Path) -> None:
    scan = read_scan(write_nifti(tmp_path / "c.nii.gz", volume(), AFFINES["oblique"]))
    scan.header.header.set_sform(AFFINES["ras"], code=1)  # now disagrees with scan.affine
    with pytest.raises(DataError, match=r"geometry drift writing .*c_seg\.nii\.gz: affine differs from .*c\.nii\.gz"):
        write_labels(scan, np.ones(SHAPE, np.uint8), tmp_path / "c_seg.nii.gz")
    assert files_in(tmp_path) == ["c.nii.gz"]


def test_nifti_writer_drift_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scan = read_scan(write_nifti(tmp_path / "c.nii.gz", volume(), AFFINES["lps"]))
    save = nib.save

    def bad_save(img, filename):
        img.header.set_qform(AFFINES["ras"], code=1)  # qform drifts, sform (the affine) stays
        save(img, filename)

    monkeypatch.setattr(nib, "save", bad_save)
    with pytest.raises(DataError, match="geometry drift .*: qform differs"):
        write_probabilities(scan, np.full((*SHAPE, 2), 0.5), tmp_path / "c_probs.nii.gz")
    assert files_in(tmp_path) == ["c.nii.gz"]


@pytest.mark.parametrize("fmt", [".mha", ".mhd", ".nrrd"])
def test_itk_writer_drift_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    sitk.WriteImage(itk_image(volume()), str(tmp_path / "in.mha"))
    scan = read_scan(tmp_path / "in.mha")
    write = sitk.WriteImage

    def shifted(image, *args, **kwargs):
        image.SetOrigin(tuple(v + 0.01 for v in image.GetOrigin()))
        write(image, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", shifted)
    expected = rf"geometry drift writing .*out{fmt}: origin differs from .*in\.mha \(written \[12\.51"
    with pytest.raises(DataError, match=expected):
        write_labels(scan, np.zeros(SHAPE, np.uint8), tmp_path / f"out{fmt}")
    assert files_in(tmp_path) == ["in.mha"]


def test_tampered_itk_header_is_caught(tmp_path: Path) -> None:
    sitk.WriteImage(itk_image(volume()), str(tmp_path / "in.nrrd"))
    scan = read_scan(tmp_path / "in.nrrd")
    scan.header["spacing"] = (1.0, 1.0, 1.0)  # disagrees with scan.affine
    with pytest.raises(DataError, match="geometry drift .*: voxel-to-world geometry differs"):
        write_labels(scan, np.zeros(SHAPE, np.uint8), tmp_path / "out.nrrd")
    assert files_in(tmp_path) == ["in.nrrd"]


# ------------------------------------------------------------------------------------------------ housekeeping


def test_remove_stale_temporaries(tmp_path: Path) -> None:
    (tmp_path / ".case.abc.part.nii.gz").write_bytes(b"half")
    (tmp_path / ".case.nii.k2j4h5_x.part.nii.gz").write_bytes(b"half")
    mhd_tmp = tmp_path / ".out.q8w7e6r5.part"
    mhd_tmp.mkdir()
    (mhd_tmp / "out.mhd").write_text("x")
    (mhd_tmp / "out.raw").write_bytes(b"x")
    keep = ["case.nii.gz", "case_seg.nii.gz", "out.mhd", "out.raw", ".hidden", ".party.nii.gz", "a.part.nii.gz"]
    for name in keep:
        (tmp_path / name).write_bytes(b"real")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".case.abc.part.nii.gz", ".case.nii.k2j4h5_x.part.nii.gz",
                                              ".out.q8w7e6r5.part"]
    assert files_in(tmp_path) == sorted(keep)
    assert remove_stale_temporaries(tmp_path) == []


@pytest.mark.parametrize("fmt", [".nii.gz", ".mha", ".nrrd"])
def test_same_labels_give_identical_bytes(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "in" / f"case{fmt}"
    src.parent.mkdir()
    if fmt == ".nii.gz":
        write_nifti(src, volume(), AFFINES["anisotropic"])
    else:
        sitk.WriteImage(itk_image(volume()), str(src))
    scan = read_scan(src)
    labels = (scan.array % 3).astype(np.uint8)
    first = write_labels(scan, labels, tmp_path / f"a{fmt}").read_bytes()
    again = write_labels(scan, labels, tmp_path / f"a{fmt}").read_bytes()
    other = write_labels(read_scan(src), labels, tmp_path / f"b{fmt}").read_bytes()
    assert first == again == other
    assert files_in(tmp_path) == sorted(["in", f"a{fmt}", f"b{fmt}"])


# ------------------------------------------------------------------------------------------------ header layouts


def test_metaimage_and_nrrd_layouts_name_every_data_file(tmp_path: Path) -> None:
    """Where a header keeps its voxels, as ITK reads them: attached (and from which byte), one file (spaces allowed),
    a LIST of slices, a pattern (MetaImage's defaults: from 1, one file per slice), for both formats."""
    from pipeline.io.scan.headers import metaimage_layout, nrrd_layout

    def mha(name: str, data_file: str) -> Path:
        head = f"ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = {data_file}\n"
        (tmp_path / name).write_bytes(head.encode() + (b"\0" * 48 if data_file == "LOCAL" else b""))
        return tmp_path / name

    local = metaimage_layout(mha("a.mha", "LOCAL"))
    assert local is not None and local.files == [] and local.plain and local.offset == (tmp_path / "a.mha").stat().st_size - 48
    assert metaimage_layout(mha("b.mhd", "my scan.raw")).files == ["my scan.raw"]
    assert metaimage_layout(mha("c.mhd", "LIST 2D\nz0.raw\nz1.raw")).files == ["z0.raw", "z1.raw"]
    assert metaimage_layout(mha("d.mhd", "z%02d.raw")).files == ["z01.raw", "z02.raw"]
    assert metaimage_layout(mha("e.mhd", "z%d.raw 5 1 -2")).files == ["z5.raw", "z3.raw"]  # at most one per slice
    with pytest.raises(DataError, match=r"e\.mhd: ElementDataFile = z%d\.raw 0 3 0: the step .* cannot be 0"):
        metaimage_layout(mha("e.mhd", "z%d.raw 0 3 0"))

    def nrrd(name: str, fields: str, data: bytes = b"") -> Path:
        (tmp_path / name).write_bytes(f"NRRD0004\ntype: short\nsizes: 4 3 2\nencoding: raw\n{fields}".encode() + data)
        return tmp_path / name

    attached = nrrd("a.nrrd", "\n", b"\0" * 48)
    layout = nrrd_layout(attached)
    assert layout is not None and layout.files == [] and layout.plain and layout.offset == attached.stat().st_size - 48
    assert nrrd_layout(nrrd("b.nrrd", "data file: ../x y.raw\n")).files == ["../x y.raw"]
    assert nrrd_layout(nrrd("c.nrrd", "datafile: LIST 2\nz0.raw\nz1.raw\n")).files == ["z0.raw", "z1.raw"]
    assert nrrd_layout(nrrd("d.nrrd", "data file: z%03d.raw 0 1 1 2\n")).files == ["z000.raw", "z001.raw"]
    assert not nrrd_layout(nrrd("e.nrrd", "byte skip: 10\n\n", b"\0" * 58)).plain  # size unknown: not checked
    assert nrrd_layout(tmp_path / "a.mha") is None and metaimage_layout(attached) is None


def test_scan_files_are_the_header_and_its_data_files(tmp_path: Path) -> None:
    """What a scan's key digests: a header with the data files it names (a NRRD's detached file too), every file of
    a DICOM folder; a data file outside the header's folder is refused, not read."""
    from pipeline.io.scan import mhd_data_file, scan_files

    sitk.WriteImage(itk_image(volume()), str(tmp_path / "a.mhd"))
    assert scan_files(tmp_path / "a.mhd") == [tmp_path / "a.mhd", tmp_path / "a.raw"]
    assert mhd_data_file(tmp_path / "a.mhd") == tmp_path / "a.raw"
    (tmp_path / "b.nrrd").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 7 6 5\nendian: little\nencoding: raw\n"
                                     "data file: a.raw\n")
    assert scan_files(tmp_path / "b.nrrd") == [tmp_path / "b.nrrd", tmp_path / "a.raw"]
    np.testing.assert_array_equal(read_scan(tmp_path / "b.nrrd").array, volume())
    write_dicom_series(tmp_path / "ser", volume())
    assert scan_files(tmp_path / "ser") == sorted((tmp_path / "ser").iterdir())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.mhd").write_text((tmp_path / "a.mhd").read_text().replace("= a.raw", "= ../a.raw"))
    for call in (scan_files, mhd_data_file, read_scan):
        with pytest.raises(DataError, match=r"c\.mhd: ElementDataFile names \.\./a\.raw, outside the header's folder"):
            call(tmp_path / "sub" / "c.mhd")


def test_headers_of_every_accepted_form_read_as_before(tmp_path: Path) -> None:
    """The header checks accept what real scans hold: a qform-only NIfTI, a slice one voxel thick with pixdim 0
    (nibabel takes 1 mm), .mhd with a LIST or a pattern of slice files, NRRD with a detached file or a pattern; each
    reads the same voxels as a plain copy."""
    from tests.hostile.test_scan_input import SHAPE, metaimage, nifti_file, nrrd, slices
    from tests.hostile.test_scan_input import volume as hostile_volume

    reference = hostile_volume()
    assert np.array_equal(read_scan(nifti_file(tmp_path / "q.nii.gz", reference, sform_code=0)).array, reference)
    thin = read_scan(nifti_file(tmp_path / "thin.nii", hostile_volume((20, 18, 1)), sform_code=0, pixdim3=0.0))
    assert thin.spatial_shape == (20, 18, 1) and np.isclose(np.linalg.det(thin.affine[:3, :3]), 1.0)
    slices(tmp_path)
    names = "\n".join(f"s{k}.raw" for k in range(SHAPE[2]))
    (tmp_path / "detached.raw").write_bytes(reference.T.tobytes())
    for header in (metaimage(tmp_path / "list.mhd", "LIST 2D\n" + names),
                   metaimage(tmp_path / "pattern.mhd", f"s%d.raw 0 {SHAPE[2] - 1} 1"),
                   nrrd(tmp_path / "detached.nrrd", data_file="detached.raw"),
                   nrrd(tmp_path / "pattern.nrrd", data_file=f"s%d.raw 0 {SHAPE[2] - 1} 1 2")):
        np.testing.assert_array_equal(read_scan(header).array, reference, err_msg=header.name)
